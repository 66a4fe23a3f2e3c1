//! The web page in headless Chromium (WebDriver), chatting with a
//! netcat-style TCP client in the same room: nickname screen, creating a
//! room, sending and receiving messages, user text shown as text (never as
//! HTML), DMs and the member list. Saves screenshots of the desktop and the
//! narrow layout to `target/screenshots/` for a human to look at.
//!
//! Needs Debian's `chromium` and `chromium-driver`; fails with that hint
//! when they are missing.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use common::webdriver::Browser;
use common::{Store, TestServer};

/// How long the page may take to show something the server already sent.
const SHOWN_WITHIN: Duration = Duration::from_secs(5);

/// `#messages .msg` rows as `[nick, content]` pairs, in page order.
fn room_messages(browser: &Browser) -> Vec<(String, String)> {
    let rows = browser.execute(
        "return [...document.querySelectorAll('#messages .msg')].map(m => [
            (m.querySelector('.nick') || {}).textContent || '',
            (m.querySelector('.content') || {}).textContent || '']);",
        vec![],
    );
    serde_json::from_value(rows).expect("rows of [nick, content]")
}

/// Waits until the page shows a room message from `nick` with exactly `content`.
fn wait_for_message(browser: &Browser, nick: &str, content: &str) {
    browser.wait_until(&format!("message {nick}: {content:?} in #messages"), SHOWN_WITHIN, |b| {
        room_messages(b).iter().any(|(n, c)| n == nick && c == content).then_some(())
    });
}

/// Prints the server's log if the test fails, to tell page bugs from server bugs.
struct ServerLogOnPanic<'a>(&'a TestServer);

impl Drop for ServerLogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.0.log());
        }
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots").join(name)
}

#[test]
fn browser_and_netcat_chat_in_the_same_room() {
    let server = TestServer::start(Store::Sqlite);
    let _log = ServerLogOnPanic(&server);
    let http = server.http.expect("the server logs its HTTP address (\"… on http://…\")");
    let browser = Browser::start();
    browser.navigate(&format!("http://{http}/"));

    // Nickname screen.
    browser.wait_until("the nickname form", SHOWN_WITHIN, |b| b.try_find("#nick-input").filter(|e| e.is_displayed()));
    browser.find("#nick-input").send_keys("webuser");
    browser.find("#nick-form button[type=submit]").click();
    browser.wait_until("the chat screen for webuser", SHOWN_WITHIN, |b| {
        let shown = b.try_find("#chat-screen")?.is_displayed();
        (shown && b.text_of("#me-nick")? == "webuser").then_some(())
    });

    // Create a room from the sidebar; the stream's `connected` switches the view to it.
    browser.find("#new-room-input").send_keys("lobby");
    browser.find("#new-room-form button[type=submit]").click();
    browser.wait_until("#current-room to show lobby", SHOWN_WITHIN, |b| {
        (b.text_of("#current-room")? == "lobby").then_some(())
    });
    browser.wait_until("lobby in the room list", SHOWN_WITHIN, |b| b.try_find("#room-list li[data-room=lobby]"));

    // A netcat user joins the same room.
    let mut tcp = server.login("tcpuser");
    tcp.send("/join lobby");
    tcp.expect_lines("Joined room: lobby\n--- Recent Messages ---\nNo recent messages\n---");

    // Browser -> netcat.
    browser.find("#message-input").send_keys("hello from the browser");
    browser.find("#message-form button[type=submit]").click();
    tcp.expect("[lobby] webuser: hello from the browser");
    wait_for_message(&browser, "webuser", "hello from the browser");

    // Netcat -> browser.
    tcp.send("hello from netcat");
    tcp.expect("[lobby] tcpuser: hello from netcat");
    wait_for_message(&browser, "tcpuser", "hello from netcat");

    // Markup in a message is shown as text and never runs or renders.
    let payload = "<script>window.__pwned=1</script><b>bold</b>";
    tcp.send(payload);
    tcp.expect(&format!("[lobby] tcpuser: {payload}"));
    wait_for_message(&browser, "tcpuser", payload);
    let shown = browser.wait_until("the payload's rendered text", SHOWN_WITHIN, |b| {
        b.find_all("#messages .msg .content").into_iter().filter_map(|e| e.try_text().ok()).find(|t| t.contains("<script>"))
    });
    assert_eq!(shown, payload, "the message is rendered as its literal text");
    assert_eq!(browser.execute("return typeof window.__pwned;", vec![]), json!("undefined"), "the script ran");
    assert_eq!(
        browser.execute("return document.querySelectorAll('#messages b, #messages script').length;", vec![]),
        json!(0),
        "user text became HTML elements"
    );

    // A DM from netcat shows up as a DM line.
    tcp.send("/dm webuser psst");
    tcp.expect("[DM to webuser] psst");
    let dm = browser.wait_until("a DM line with psst", SHOWN_WITHIN, |b| {
        b.find_all("#messages .line.dm").into_iter().filter_map(|e| e.try_text().ok()).find(|t| t.contains("psst"))
    });
    assert!(dm.contains("[DM from tcpuser] psst"), "DM line: {dm:?}");

    // Both users are listed as members of the room.
    browser.wait_until("webuser and tcpuser in #members", Duration::from_secs(10), |b| {
        let nicks = b.execute("return [...document.querySelectorAll('#members li')].map(li => li.dataset.nick);", vec![]);
        (nicks == json!(["tcpuser", "webuser"])).then_some(())
    });
    assert_eq!(browser.text_of("#member-count").as_deref(), Some("— 2"));

    // Nothing went wrong along the way.
    let error = browser.find("#error-bar");
    assert!(!error.is_displayed(), "error bar shows: {:?}", browser.text_of("#error-text"));

    let path = browser.screenshot(screenshot_path("browser-chat.png"));
    println!("screenshot: {}", path.display());

    // Narrow screen: the side panels become drawers and the input still fits.
    browser.set_window_size(400, 800);
    // Wait until both drawers have slid off screen (they animate when the media query switches).
    browser.wait_until("the narrow layout with both drawers closed", SHOWN_WITHIN, |b| {
        let closed = b.execute(
            "const w = window.innerWidth;
             const rooms = document.getElementById('sidebar').getBoundingClientRect();
             const members = document.getElementById('members-panel').getBoundingClientRect();
             return w <= 720 && rooms.right <= 0 && members.left >= w;",
            vec![],
        );
        (closed == json!(true)).then_some(())
    });
    let fits: Value = browser.execute(
        "const r = document.getElementById('message-input').getBoundingClientRect();
         const s = document.querySelector('#message-form button').getBoundingClientRect();
         return r.width > 100 && s.right <= window.innerWidth && r.bottom <= window.innerHeight
             && document.documentElement.scrollWidth <= window.innerWidth;",
        vec![],
    );
    assert_eq!(fits, json!(true), "the message input and Send button fit a 400 px wide window");
    assert!(browser.find("#toggle-rooms").is_displayed(), "the rooms drawer button shows on a narrow screen");
    let path = browser.screenshot(screenshot_path("browser-narrow.png"));
    println!("screenshot: {}", path.display());

    // The rooms drawer opens over the chat and lists the room.
    browser.find("#toggle-rooms").click();
    browser.wait_until("the rooms drawer to open", SHOWN_WITHIN, |b| {
        let open = b.execute("return document.getElementById('sidebar').getBoundingClientRect().left >= 0;", vec![]);
        (open == json!(true)).then_some(())
    });
    assert!(browser.find("#room-list li[data-room=lobby]").is_displayed(), "lobby is listed in the open drawer");
}

/// A port that is free right now (for a server that must come back on the
/// same address after a restart).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_page_reconnects_after_a_server_restart_without_losing_messages() {
    let mut server = TestServer::builder(Store::Sqlite)
        .env("TCP_PORT", free_port())
        .env("HTTP_PORT", free_port())
        .start();
    let http = server.http.expect("the server logs its HTTP address");
    let browser = Browser::start();
    browser.navigate(&format!("http://{http}/"));
    browser.wait_until("the nickname form", SHOWN_WITHIN, |b| b.try_find("#nick-input").filter(|e| e.is_displayed()));
    browser.find("#nick-input").send_keys("webuser");
    browser.find("#nick-form button[type=submit]").click();
    browser.find("#new-room-input").send_keys("lobby");
    browser.find("#new-room-form button[type=submit]").click();
    browser.wait_until("#current-room to show lobby", SHOWN_WITHIN, |b| {
        (b.text_of("#current-room")? == "lobby").then_some(())
    });
    let mut tcp = server.login("tcpuser");
    tcp.join("lobby");
    tcp.send("before the restart");
    tcp.expect("[lobby] tcpuser: before the restart");
    wait_for_message(&browser, "tcpuser", "before the restart");

    // The server goes away and comes back on the same ports, with its store.
    assert!(server.terminate().success());
    server.restart();
    let _log = ServerLogOnPanic(&server);
    // Sent while the page is still reconnecting: it must not be lost.
    let mut tcp = server.login("tcpuser");
    tcp.join("lobby");
    tcp.send("while you were away");
    tcp.expect("[lobby] tcpuser: while you were away");

    browser.wait_until("the page to reconnect", Duration::from_secs(10), |b| {
        room_messages(b).iter().any(|(_, c)| c == "while you were away").then_some(())
    });
    tcp.send("after the reconnect");
    wait_for_message(&browser, "tcpuser", "after the reconnect");
    let contents: Vec<String> = room_messages(&browser).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        contents.iter().filter(|c| c.as_str() == "before the restart").count(),
        1,
        "a message shown twice after the reconnect: {contents:?}"
    );
    let order: Vec<&String> =
        contents.iter().filter(|c| ["before the restart", "while you were away", "after the reconnect"].contains(&c.as_str())).collect();
    assert_eq!(order, ["before the restart", "while you were away", "after the reconnect"]);
}

#[test]
fn a_registered_user_logs_in_with_a_password_and_stays_logged_in_across_a_reload() {
    let server = TestServer::start(Store::Sqlite);
    let _log = ServerLogOnPanic(&server);
    for nick in ["webber", "bob"] {
        let mut owner = server.login(nick);
        owner.send("/register hunter22hunter");
        owner.expect(&format!("Registered {nick}. From now on, log in as {nick} with your password."));
        if nick == "bob" {
            owner.create("hideout private");
        }
        owner.send("/quit");
        owner.expect("Goodbye!");
    }
    let mut tcp = server.login("tcpuser");
    tcp.create("lobby");

    let http = server.http.expect("the server logs its HTTP address");
    let page = format!("http://{http}/");
    let browser = Browser::start();
    browser.navigate(&page);
    browser.wait_until("the nickname form", SHOWN_WITHIN, |b| b.try_find("#nick-input").filter(|e| e.is_displayed()));
    // Without the password, the page says why.
    browser.find("#nick-input").send_keys("webber");
    browser.find("#nick-form button[type=submit]").click();
    browser.wait_until("the registered-nickname error", SHOWN_WITHIN, |b| {
        b.text_of("#error-text").filter(|t| t.contains("is registered")).map(|_| ())
    });
    browser.find("#password-input").send_keys("hunter22hunter");
    browser.find("#nick-form button[type=submit]").click();
    let logged_in = |b: &Browser| {
        let shown = b.try_find("#chat-screen")?.is_displayed();
        (shown && b.text_of("#me-nick")? == "webber").then_some(())
    };
    browser.wait_until("the chat screen for webber", SHOWN_WITHIN, logged_in);
    browser.find("#room-list li[data-room=lobby] button").click();
    browser.wait_until("#current-room to show lobby", SHOWN_WITHIN, |b| (b.text_of("#current-room")? == "lobby").then_some(()));
    // Someone else's private room does not exist for this user.
    let listed = browser.execute("return [...document.querySelectorAll('#room-list li')].map(li => li.dataset.room);", vec![]);
    assert_eq!(listed, json!(["lobby"]), "the room list shows a private room of someone else");

    browser.execute("location.reload();", vec![]);
    browser.wait_until("the chat screen for webber after the reload", SHOWN_WITHIN, logged_in);
    tcp.send("still you?");
    wait_for_message(&browser, "tcpuser", "still you?");
    // The token is in an HttpOnly cookie: never in page script, never in a URL.
    assert_eq!(browser.execute("return document.cookie.includes('bd_session');", vec![]), json!(false));
    let urls = browser.execute("return performance.getEntriesByType('resource').map(e => e.name).join(' ');", vec![]);
    assert!(!urls.as_str().unwrap().contains("sessionId"), "a token in a URL: {urls}");

    // Away from the page, a DM arrives; back on it, the conversation shows it.
    browser.navigate("about:blank");
    let mut bob = server.connect();
    bob.expect("Welcome to Baby Discord!");
    bob.expect_text("Enter your nickname: ");
    bob.send("bob");
    bob.expect_text("Password for bob: ");
    bob.send("hunter22hunter");
    bob.expect("Welcome back, bob!");
    bob.expect("Type /help for available commands.");
    let deadline = std::time::Instant::now() + SHOWN_WITHIN;
    loop {
        bob.send("/dm webber while you were away");
        let line = bob.line();
        if line.ends_with("(webber is offline; they will see it when they log in)") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "webber still online: {line}");
        std::thread::sleep(Duration::from_millis(200));
    }
    browser.navigate(&page);
    browser.wait_until("the chat screen for webber on return", SHOWN_WITHIN, logged_in);
    browser.wait_until("the conversation with bob, unread", SHOWN_WITHIN, |b| {
        b.try_find("#dm-list li.unread[data-with=bob]")
    });
    browser.find("#dm-list li[data-with=bob] button").click();
    browser.wait_until("the DM in the pane", SHOWN_WITHIN, |b| {
        b.find_all("#messages .line.dm")
            .into_iter()
            .filter_map(|e| e.try_text().ok())
            .find(|t| t.contains("[DM from bob] while you were away"))
    });
    let path = browser.screenshot(screenshot_path("browser-dms.png"));
    println!("screenshot: {}", path.display());
}
