//! The self-service page in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, spoken to directly over HTTP), 360 px wide, in English, Thai and Persian — a
//! screenshot per locale under `target/`, the three buttons clicked through, the ticket's story
//! (the text sent by SMS, delivered, the customer's answer and what it changed) in the
//! customer's words and calendar, and a closed ticket showing what happened instead of the
//! buttons. Without Chromium the test skips, and
//! fails under `CI=true` (`.ci/run` installs `chromium` and `chromium-driver`).

mod support;

use forewarn::domain::{Priority, Status};
use forewarn::fleet::Channel;
use forewarn::notify::{Clock, TicketDesk};
use std::time::{Duration, Instant};
use support::browser::{find, Driver, Viewport};
use support::notify::Harness;

#[tokio::test]
async fn the_page_works_in_a_browser_in_three_languages_at_360_px() {
    let (Some(chromium), Some(chromedriver)) = (
        find(&["chromium", "chromium-browser", "google-chrome"]),
        find(&["chromedriver"]),
    ) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium and chromedriver are required under CI"
        );
        eprintln!("skipped: chromium or chromedriver is not installed");
        return;
    };
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let d = Driver::start(&chromium, &chromedriver, Viewport::Phone(360)).await;
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&out).unwrap();
    let cases = [
        ("en", "confirm", Status::Scheduled, "Thank you"),
        ("th", "reschedule", Status::Acknowledged, "ขอบคุณ"),
        ("fa", "not_now", Status::Acknowledged, "سپاسگزاریم"),
    ];
    // The story's words: (SMS, delivered, the alert's headline, "you answered", this page,
    // the year of the ticket in the customer's calendar, the status after the answer).
    let story_words = [
        (
            "Text message",
            "message delivered",
            "Urgent: service needed",
            "You answered",
            "this page",
            "2026",
            "Visit booked",
        ),
        (
            "SMS",
            "ข้อความถึงแล้ว",
            "ด่วน: ควรซ่อมบำรุง",
            "คุณตอบกลับ",
            "หน้านี้",
            "2569",
            "รับทราบแล้ว",
        ),
        (
            "پیامک",
            "پیام رسید",
            "فوری: نیاز به سرویس",
            "پاسخ شما",
            "همین صفحه",
            "۱۴۰۵",
            "دیده شد",
        ),
    ];
    for ((loc, action, want, thanks), words) in cases.into_iter().zip(story_words) {
        let (sms, delivered, headline, answered, page, year, after) = words;
        let c = h.customer(&format!("page-{loc}"), loc, &[Channel::Sms]);
        let t = h.open(&c, &format!("pump-{loc}"), Priority::Urgent, 0.95, Some(30));
        // The alert goes out by SMS and the provider reports it delivered.
        h.run().await;
        let sid = h
            .fakes
            .delivered("sms")
            .last()
            .map(|d| d.sid.clone())
            .unwrap();
        let r = h.message_status(&sid, "delivered").await;
        assert_eq!(r.status(), 204);
        let link = h.notifier.link(&t.id, &c.id, h.clock.now_ms());
        d.go(&link).await;
        let story = d
            .script("return document.getElementById('story').innerText")
            .await;
        let story = story.as_str().unwrap_or_default().to_string();
        for w in [sms, delivered, headline, year] {
            assert!(story.contains(w), "{loc}: {w:?} not in the story: {story}");
        }
        // A story for people: no score, no ISO timestamps, no bookkeeping.
        for w in ["0.95", "95", "2026-", "queued", "decision"] {
            assert!(!story.contains(w), "{loc}: {w:?} in the story: {story}");
        }
        let dir = d.script("return document.documentElement.dir").await;
        assert_eq!(dir, if loc == "fa" { "rtl" } else { "ltr" });
        assert_eq!(d.script("return document.documentElement.lang").await, loc);
        let fits = d
            .script("return document.documentElement.scrollWidth <= window.innerWidth")
            .await;
        assert_eq!(fits, true, "{loc}: no sideways scrolling at 360 px");
        let width = d.script("return window.innerWidth").await;
        assert!(width.as_i64().unwrap() <= 360, "{width}");
        d.screenshot(&out.join(format!("notify-page-{loc}.png")))
            .await;
        d.script(&format!(
            "document.querySelector('input[name=when]').value = '{}'; return 0",
            "Tuesday"
        ))
        .await;
        d.click(&format!("#{action}")).await;
        // The form posts and the browser loads the answer page.
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let v = d.script("return document.body.innerText").await;
            let text = v.as_str().unwrap_or_default().to_string();
            if text.contains(thanks) || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let text = text.as_str();
        assert!(text.contains(thanks), "{loc}: {text}");
        assert_eq!(h.desk.ticket(&t.id).unwrap().status, want, "{loc}");
        // The answer joins the story: on this page, and what it changed.
        let story = d
            .script("return document.getElementById('story').innerText")
            .await;
        let story = story.as_str().unwrap_or_default();
        let answer_line = story
            .lines()
            .find(|l| l.contains(answered))
            .unwrap_or_else(|| panic!("{loc}: no answer in the story: {story}"));
        assert!(
            answer_line.contains(page) && answer_line.contains(after),
            "{loc}: {answer_line}"
        );
        // The answer is shown in the customer's words, and the buttons remain while it is open.
        assert!(text.lines().count() > 3, "{text}");
        // Closed: what happened, no buttons.
        h.desk
            .customer_reply(&t.id, Some(Status::Dismissed), "api:ops", "false alarm")
            .unwrap();
        d.go(&link).await;
        let buttons = d
            .script("return document.querySelectorAll('button').length")
            .await;
        assert_eq!(buttons, 0, "{loc}: a closed ticket offers no buttons");
        let closed = d
            .script("return document.getElementById('closed').innerText")
            .await;
        assert!(!closed.as_str().unwrap().is_empty(), "{loc}");
        if loc == "fa" {
            d.screenshot(&out.join("notify-page-fa-closed.png")).await;
        }
    }
    // A bad link answers in the visitor's language.
    d.go(&format!("{}/notify/v1/s/not-a-token", h.url)).await;
    let text = d.script("return document.body.innerText").await;
    assert!(text.as_str().unwrap().contains("link"), "{text}");
}
