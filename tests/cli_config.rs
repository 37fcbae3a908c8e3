//! `forewarn serve --print-config`: the effective configuration (file, environment, flags) as
//! TOML an operator can read and reuse, with every secret shown as `***`.

mod support;

use support::process::{forewarn, succeeds};

#[test]
fn print_config_shows_the_effective_settings_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("forewarn.toml");
    std::fs::write(
        &file,
        "[broker]\nurl = \"mqtt://broker.example:1883\"\nusername = \"fw\"\n\n[api]\ntokens = [\"file-token-abc\"]\n",
    )
    .unwrap();
    let out = succeeds(
        forewarn()
            .args([
                "serve",
                "--print-config",
                "--listen",
                "127.0.0.1:9999",
                "--config",
            ])
            .arg(&file)
            .env("FOREWARN__BROKER__PASSWORD", "hunter2-from-env")
            .env("FOREWARN__DISPATCH__WEBHOOK_SECRET", "whsec-xyz"),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in ["hunter2-from-env", "whsec-xyz", "file-token-abc"] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(
        v["broker"]["url"].as_str(),
        Some("mqtt://broker.example:1883")
    );
    assert_eq!(v["broker"]["username"].as_str(), Some("fw"));
    assert_eq!(v["broker"]["password"].as_str(), Some("***"));
    assert_eq!(v["dispatch"]["webhook_secret"].as_str(), Some("***"));
    assert_eq!(v["api"]["tokens"][0].as_str(), Some("***"));
    // The flag wins over the file and the defaults.
    assert_eq!(v["api"]["listen"].as_str(), Some("127.0.0.1:9999"));
    // Every section is there, defaults included, so the output documents the whole tree.
    for section in [
        "ingest", "features", "scoring", "tickets", "store", "notify", "shutdown",
    ] {
        assert!(v.get(section).is_some(), "no [{section}] in:\n{text}");
    }
}
