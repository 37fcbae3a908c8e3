//! The one rule for tests that need something from the machine (a Mosquitto binary, a mount, the
//! shared data sets, Python packages): outside CI they may skip with a note; under `CI=true`
//! they fail, so a green CI run means the real part ran.

/// Whether this is a CI run (`CI=true`, as `.ci/run` and most CI services set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Says why `test` cannot run its real part: a note outside CI, a failure under `CI=true`.
/// The caller returns after it (outside CI).
#[track_caller]
pub fn cannot_run(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why} (under CI=true this fails rather than skipping; see .ci/run)");
    }
    eprintln!("note: {test} skipped: {why}");
}

/// Whether `python3` can import every one of `modules` (third-party peers run as they are);
/// when it cannot, [`cannot_run`] says so for `test`.
#[track_caller]
pub fn python_can_import(test: &str, modules: &[&str]) -> bool {
    let ok = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!("import {}", modules.join(", ")))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        cannot_run(
            test,
            &format!(
                "python3 cannot import {} (pip install {})",
                modules.join(", "),
                modules.join(" ")
            ),
        );
    }
    ok
}
