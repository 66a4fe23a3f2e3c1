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

/// Where screenshots go: `<target dir>/screenshots/` (never committed).
fn screenshot_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots").join(name)
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
    browser.wait_until("the conversation with bob in the pane", SHOWN_WITHIN, |b| {
        let rows = b.execute(
            "return [...document.querySelectorAll('#dm-messages .msg')].map(m => [
                m.querySelector('.nick').textContent, m.querySelector('.content').textContent]);",
            vec![],
        );
        (rows == json!([["bob", "while you were away"]])).then_some(())
    });
    assert_eq!(browser.text_of("#current-room").as_deref(), Some("bob"), "the header names the conversation");
    // Opening it read it: the badge is gone.
    browser.wait_until("the conversation read", SHOWN_WITHIN, |b| {
        b.try_find("#dm-list li[data-with=bob]").filter(|li| li.attribute("class").is_some_and(|c| !c.contains("unread")))
    });
    let path = browser.screenshot(screenshot_path("browser-dms.png"));
    println!("screenshot: {}", path.display());
}

// ---------------------------------------------------------------- rich chat (unread, edits, links, typing, presence)

/// A browser on the page at `http`, logged in as the guest `nick`.
fn browser_as(http: std::net::SocketAddr, nick: &str) -> Browser {
    let browser = Browser::start();
    browser.navigate(&format!("http://{http}/"));
    browser.wait_until("the nickname form", SHOWN_WITHIN, |b| b.try_find("#nick-input").filter(|e| e.is_displayed()));
    browser.find("#nick-input").send_keys(nick);
    browser.find("#nick-form button[type=submit]").click();
    browser.wait_until(&format!("the chat screen for {nick}"), SHOWN_WITHIN, |b| {
        let shown = b.try_find("#chat-screen")?.is_displayed();
        (shown && b.text_of("#me-nick")? == nick).then_some(())
    });
    browser
}

/// Clicks `room` in the sidebar and waits until the pane shows it.
fn open_room(browser: &Browser, room: &str) {
    let item = format!("#room-list li[data-room={room}] button");
    browser.wait_until(&format!("{room} in the room list"), Duration::from_secs(10), |b| b.try_find(&item));
    browser.find(&item).click();
    browser.wait_until(&format!("#current-room to show {room}"), SHOWN_WITHIN, |b| {
        (b.text_of("#current-room")? == room).then_some(())
    });
}

/// Types `text` into the message input and presses Send.
fn type_line(browser: &Browser, text: &str) {
    browser.find("#message-input").send_keys(text);
    browser.find("#message-form button[type=submit]").click();
}

/// The unread and mention badges of a room in the sidebar (empty strings when hidden).
fn badges(browser: &Browser, room: &str) -> Value {
    browser.execute(
        "const li = document.querySelector(`#room-list li[data-room=${arguments[0]}]`);
         if (!li) return null;
         const shown = (b) => b.hidden ? '' : b.textContent;
         return [shown(li.querySelector('.badge.unread')), shown(li.querySelector('.badge.mention'))];",
        vec![json!(room)],
    )
}

/// The error bar's text, or `None` while it is hidden.
fn error_bar(browser: &Browser) -> Option<String> {
    browser.find("#error-bar").is_displayed().then(|| browser.text_of("#error-text").unwrap_or_default())
}

fn input_value(browser: &Browser) -> Value {
    browser.find("#message-input").property("value")
}

/// Resizes the window so that the page itself (the viewport) is `width` × `height`.
fn set_viewport(browser: &Browser, width: u32, height: u32) {
    browser.set_window_size(width, height);
    // Headless Chromium keeps the width but takes its window frame off the height.
    let frame = browser.execute("return Math.max(0, window.outerHeight - window.innerHeight);", vec![]);
    let frame = frame.as_u64().unwrap_or(0) as u32;
    if frame > 0 {
        browser.set_window_size(width, height + frame);
    }
}

/// The CSS selector of my newest message in the pane.
fn my_last_message(browser: &Browser) -> String {
    let id = browser.execute("return [...document.querySelectorAll('#messages .msg.mine')].pop().dataset.id;", vec![]);
    format!("#messages .msg[data-id=\"{}\"]", id.as_str().expect("a message of mine in the pane"))
}

#[test]
fn rooms_with_new_messages_get_unread_and_mention_badges_and_the_title_counts_them() {
    let server = TestServer::start(Store::Sqlite);
    let _log = ServerLogOnPanic(&server);
    let http = server.http.expect("the server logs its HTTP address");
    let mut carl = server.login("carl");
    carl.create("lobby");
    carl.create("other");
    let alice = browser_as(http, "alice");
    open_room(&alice, "lobby");
    let bob = browser_as(http, "bob");
    open_room(&bob, "other");
    alice.wait_until("the title of a room with nothing unread", SHOWN_WITHIN, |b| {
        (b.title() == "#lobby · Baby Discord").then_some(())
    });
    assert_eq!(badges(&alice, "other"), json!(["", ""]), "nothing is unread yet");

    // Two messages in a room alice is not in, one of them naming her.
    type_line(&bob, "hi everyone");
    carl.wait_for(|l| l == "[other] bob: hi everyone");
    carl.send("hey @alice, look at this");
    carl.wait_for(|l| l == "[other] carl: hey @alice, look at this");
    alice.wait_until("unread 2 and mention @1 on other", Duration::from_secs(10), |b| {
        (badges(b, "other") == json!(["2", "@1"])).then_some(())
    });
    assert_eq!(badges(&alice, "lobby"), json!(["", ""]), "the room alice looks at has nothing unread");
    alice.wait_until("the title to count the unread messages", SHOWN_WITHIN, |b| {
        (b.title() == "(2) Baby Discord").then_some(())
    });
    // The member count is secondary text, not in the badge spot.
    assert_eq!(alice.text_of("#room-list li[data-room=other] .room-members").as_deref(), Some("2 members"));
    let path = alice.screenshot(screenshot_path("badges-desktop.png"));
    println!("screenshot: {}", path.display());

    // Opening the room: a "New messages" line above the first unread one, the mention highlighted, badges gone.
    open_room(&alice, "other");
    alice.wait_until("the new-messages line above bob's message", SHOWN_WITHIN, |b| {
        let next = b.execute(
            "const line = document.getElementById('new-line');
             const next = line && line.nextElementSibling;
             return next ? next.querySelector('.content').textContent : null;",
            vec![],
        );
        (next == json!("hi everyone")).then_some(())
    });
    let mention = alice.execute(
        "return [...document.querySelectorAll('#messages .msg.mention .content')].map(c => c.textContent);",
        vec![],
    );
    assert_eq!(mention, json!(["hey @alice, look at this"]), "the mention is highlighted");
    alice.wait_until("the badges and the title count to go", SHOWN_WITHIN, |b| {
        (badges(b, "other") == json!(["", ""]) && b.title() == "#other · Baby Discord").then_some(())
    });
    let path = alice.screenshot(screenshot_path("new-messages-line.png"));
    println!("screenshot: {}", path.display());

    // Search in the current room: the hits are listed; clicking one shows it in the pane.
    alice.find("#search-input").send_keys("look\u{E007}");
    let hits = alice.wait_until("a search result", SHOWN_WITHIN, |b| {
        let hits = b.execute("return [...document.querySelectorAll('#search-list .search-text')].map(t => t.textContent);", vec![]);
        (hits != json!([])).then_some(hits)
    });
    assert_eq!(hits, json!(["hey @alice, look at this"]));
    assert!(alice.text_of("#search-summary").is_some_and(|t| t.starts_with("1 result for")));
    let path = alice.screenshot(screenshot_path("search.png"));
    println!("screenshot: {}", path.display());
    alice.find("#search-list .search-hit-btn").click();
    alice.wait_until("the hit highlighted in the pane", SHOWN_WITHIN, |b| {
        let flashed = b.execute("return [...document.querySelectorAll('#messages .msg.flash .content')].map(c => c.textContent);", vec![]);
        (flashed == json!(["hey @alice, look at this"])).then_some(())
    });
    assert!(!alice.find("#search-results").is_displayed(), "the results close once the hit is shown");
    alice.find("#search-input").clear();
    alice.find("#search-input").send_keys("nothing-like-this\u{E007}");
    alice.wait_until("the no-match answer", SHOWN_WITHIN, |b| {
        b.text_of("#search-summary").filter(|t| t.starts_with("No messages in #other match"))
    });
}

#[test]
fn links_actions_edits_deletes_typing_and_presence_between_two_browsers_and_netcat() {
    let server = TestServer::start(Store::Sqlite);
    let _log = ServerLogOnPanic(&server);
    let http = server.http.expect("the server logs its HTTP address");
    let mut carl = server.login("carl");
    carl.create("lobby");
    let alice = browser_as(http, "alice");
    open_room(&alice, "lobby");
    let bob = browser_as(http, "bob");
    open_room(&bob, "lobby");

    // A link is an `a` element; the markup around it stays text.
    let text = "<b>x</b> https://example.com";
    type_line(&alice, text);
    carl.wait_for(|l| l == format!("[lobby] alice: {text}"));
    wait_for_message(&bob, "alice", text);
    let links = bob.execute(
        "return [...document.querySelectorAll('#messages .msg .content a')]
            .map(a => [a.textContent, a.getAttribute('href'), a.target, a.rel]);",
        vec![],
    );
    assert_eq!(links, json!([["https://example.com", "https://example.com/", "_blank", "noopener noreferrer"]]));
    assert_eq!(bob.execute("return document.querySelectorAll('#messages b').length;", vec![]), json!(0), "markup was rendered");

    // An action.
    type_line(&alice, "/me waves");
    carl.wait_for(|l| l == "[lobby] * alice waves");
    bob.wait_until("the action as `* alice waves`", SHOWN_WITHIN, |b| {
        b.find_all("#messages .msg.action .content").into_iter().filter_map(|e| e.try_text().ok()).find(|t| t == "* alice waves")
    });
    assert_eq!(input_value(&alice), json!(""), "the input is empty after a command");

    // Edit: hover one's own message, press Edit, change the text, Enter.
    type_line(&alice, "teh typo");
    carl.wait_for(|l| l == "[lobby] alice: teh typo");
    wait_for_message(&bob, "alice", "teh typo");
    let row = my_last_message(&alice);
    alice.find(&row).hover();
    alice.find(&format!("{row} .msg-edit")).click();
    let edit = alice.find(&format!("{row} .edit-input"));
    edit.clear();
    edit.send_keys("the typo, fixed\u{E007}");
    carl.wait_for(|l| l == "[lobby] alice (edited): the typo, fixed");
    wait_for_message(&bob, "alice", "the typo, fixed (edited)");
    wait_for_message(&alice, "alice", "the typo, fixed (edited)");
    assert!(
        bob.try_find("#messages .msg .edited-mark").is_some(),
        "the edited message is marked (edited)"
    );
    let others = bob.execute("return [...document.querySelectorAll('#messages .msg .msg-edit')].length;", vec![]);
    assert_eq!(others, json!(0), "bob can edit alice's messages");

    // Delete: hover, Delete, confirm.
    alice.find(&row).hover();
    alice.find(&format!("{row} .msg-delete")).click();
    alice.find(&format!("{row} .confirm-delete")).click();
    carl.wait_for(|l| l == "[system] alice deleted a message");
    bob.wait_until("the deleted message without its text", SHOWN_WITHIN, |b| {
        let gone = !room_messages(b).iter().any(|(_, c)| c.contains("typo"));
        let marked = b.try_find("#messages .msg.deleted").is_some_and(|e| e.try_text().is_ok_and(|t| t.contains("message deleted")));
        (gone && marked).then_some(())
    });

    // Presence: netcat's /away shows in the browser's member list.
    carl.send("/away lunch");
    carl.wait_for(|l| l == "You are marked as away.");
    bob.wait_until("carl away in the members list", Duration::from_secs(10), |b| {
        let member = b.execute(
            "const li = document.querySelector('#members li[data-nick=carl]');
             return li && [li.dataset.status, (li.querySelector('.member-status') || {}).textContent || ''];",
            vec![],
        );
        (member == json!(["away", "away: lunch"])).then_some(())
    });

    // Something for the screenshots: a mention of bob and an unread room.
    carl.send("welcome back @bob, see https://example.org/docs.");
    carl.wait_for(|l| l.starts_with("[lobby] carl: welcome back"));
    let mut dora = server.login("dora");
    dora.create("random");
    dora.send("@bob are you around?");
    dora.wait_for(|l| l == "[random] dora: @bob are you around?");
    bob.wait_until("badges on random", Duration::from_secs(10), |b| (badges(b, "random") == json!(["1", "@1"])).then_some(()));

    // Typing: alice types, bob sees it, then it expires.
    set_viewport(&bob, 1280, 800);
    alice.find("#message-input").send_keys("I am typ");
    bob.wait_until("alice's typing line", SHOWN_WITHIN, |b| (b.text_of("#typing")? == "alice is typing…").then_some(()));
    let path = bob.screenshot(screenshot_path("rich-desktop.png"));
    println!("screenshot: {}", path.display());
    bob.wait_until("the typing line to expire", Duration::from_secs(10), |b| b.text_of("#typing").filter(|t| t.is_empty()));
    assert_eq!(alice.text_of("#typing").as_deref(), Some(""), "alice sees her own typing");

    // Back online.
    carl.send("/back");
    carl.wait_for(|l| l == "You are back.");
    bob.wait_until("carl online again", Duration::from_secs(10), |b| {
        let status = b.execute("const li = document.querySelector('#members li[data-nick=carl]'); return li && li.dataset.status;", vec![]);
        (status == json!("online")).then_some(())
    });

    // A DM is a conversation in the sidebar with an unread badge, counted in the title.
    carl.send("/dm bob psst, bob");
    carl.wait_for(|l| l == "[DM to bob] psst, bob");
    bob.wait_until("the conversation with carl, unread", SHOWN_WITHIN, |b| {
        let badge = b.execute(
            "const li = document.querySelector('#dm-list li[data-with=carl]'); return li && li.querySelector('.badge').textContent;",
            vec![],
        );
        (badge == json!("1")).then_some(())
    });
    bob.wait_until("the title to count the DM", SHOWN_WITHIN, |b| (b.title() == "(2) Baby Discord").then_some(()));
    bob.find("#dm-list li[data-with=carl] button").click();
    bob.wait_until("the conversation in the pane", SHOWN_WITHIN, |b| {
        let rows = b.execute(
            "return [...document.querySelectorAll('#dm-messages .msg')].map(m => m.querySelector('.content').textContent);",
            vec![],
        );
        (rows == json!(["psst, bob"]) && b.text_of("#current-room")? == "carl").then_some(())
    });
    type_line(&bob, "hello carl");
    carl.wait_for(|l| l == "[DM from bob] hello carl");
    bob.wait_until("the answer in the conversation", SHOWN_WITHIN, |b| {
        let rows = b.execute("return document.querySelectorAll('#dm-messages .msg').length;", vec![]);
        (rows == json!(2)).then_some(())
    });
    assert_eq!(bob.title(), "(1) Baby Discord", "the DM is read; random is still unread");
    open_room(&bob, "lobby");
    wait_for_message(&bob, "carl", "welcome back @bob, see https://example.org/docs.");

    // Phone width: the pane, the input and the drawers with their badges.
    set_viewport(&bob, 390, 844);
    bob.wait_until("the narrow layout", SHOWN_WITHIN, |b| {
        let closed = b.execute(
            "const r = document.getElementById('sidebar').getBoundingClientRect(); return window.innerWidth <= 720 && r.right <= 0;",
            vec![],
        );
        (closed == json!(true)).then_some(())
    });
    let fits = bob.execute(
        "const s = document.querySelector('#message-form button').getBoundingClientRect();
         return s.right <= window.innerWidth && document.documentElement.scrollWidth <= window.innerWidth;",
        vec![],
    );
    assert_eq!(fits, json!(true), "the page fits a 390 px wide window");
    let path = bob.screenshot(screenshot_path("rich-phone.png"));
    println!("screenshot: {}", path.display());
    bob.find("#toggle-rooms").click();
    bob.wait_until("the rooms drawer to open", SHOWN_WITHIN, |b| {
        let open = b.execute("return document.getElementById('sidebar').getBoundingClientRect().left >= 0;", vec![]);
        (open == json!(true)).then_some(())
    });
    let path = bob.screenshot(screenshot_path("rich-phone-rooms.png"));
    println!("screenshot: {}", path.display());
    bob.execute("document.dispatchEvent(new KeyboardEvent('keydown', { key: 'Escape' }));", vec![]);
    bob.wait_until("the rooms drawer to close", SHOWN_WITHIN, |b| {
        let closed = b.execute("return document.getElementById('sidebar').getBoundingClientRect().right <= 0;", vec![]);
        (closed == json!(true)).then_some(())
    });
    bob.find("#toggle-members").click();
    bob.wait_until("the members drawer to open", SHOWN_WITHIN, |b| {
        let open = b.execute(
            "return document.getElementById('members-panel').getBoundingClientRect().right <= window.innerWidth + 1;",
            vec![],
        );
        (open == json!(true)).then_some(())
    });
    let path = bob.screenshot(screenshot_path("rich-phone-members.png"));
    println!("screenshot: {}", path.display());
}

#[test]
fn errors_go_away_once_things_work_and_a_failed_command_leaves_the_input_empty() {
    let mut server = TestServer::builder(Store::Sqlite)
        .env("TCP_PORT", free_port())
        .env("HTTP_PORT", free_port())
        .start();
    let http = server.http.expect("the server logs its HTTP address");
    let mut carl = server.login("carl");
    carl.create("general");
    let alice = browser_as(http, "alice");

    // A room name with a space: a clear sentence, and the input is empty again.
    type_line(&alice, "/create my room");
    alice.wait_until("the room-name error", SHOWN_WITHIN, |b| {
        error_bar(b).filter(|t| t == "/create my room: Room names can't contain spaces — try my-room")
    });
    assert_eq!(input_value(&alice), json!(""), "the failed command stayed in the input");
    // The next command is not appended to the failed one; the server's refusal shows too.
    type_line(&alice, "/join nosuchroom");
    alice.wait_until("the unknown-room error", SHOWN_WITHIN, |b| error_bar(b).filter(|t| t.contains("nosuchroom")));
    assert_eq!(input_value(&alice), json!(""));
    // A command that works clears the error.
    type_line(&alice, "/join general");
    alice.wait_until("#current-room to show general", SHOWN_WITHIN, |b| (b.text_of("#current-room")? == "general").then_some(()));
    alice.wait_until("the error bar to go", SHOWN_WITHIN, |b| error_bar(b).is_none().then_some(()));
    // An empty room says so.
    alice.wait_until("the empty-room text", SHOWN_WITHIN, |b| b.text_of("#room-empty").filter(|t| t.contains("#general is empty")));
    carl.send("now it is not empty");
    wait_for_message(&alice, "carl", "now it is not empty");
    assert!(!alice.find("#room-empty").is_displayed(), "a room with a message says it is empty");

    // The server goes away: the send fails, says so, and gives the text back.
    assert!(server.terminate().success());
    type_line(&alice, "anyone there?");
    alice.wait_until("the send error", SHOWN_WITHIN, |b| error_bar(b));
    assert_eq!(input_value(&alice), json!("anyone there?"), "the unsent message is back in the input");
    // It comes back: once the page has reconnected, the error is gone by itself.
    server.restart();
    let _log = ServerLogOnPanic(&server);
    alice.wait_until("the error bar to clear after the reconnect", Duration::from_secs(10), |b| {
        (error_bar(b).is_none() && b.text_of("#status-text")? == "connected").then_some(())
    });
    let mut carl = server.login("carl");
    carl.join("general");
    alice.find("#message-form button[type=submit]").click();
    carl.wait_for(|l| l == "[general] alice: anyone there?");
    assert_eq!(input_value(&alice), json!(""));

    // IRC habits pass through the page to the server.
    type_line(&alice, "/part");
    alice.wait_until("no room", SHOWN_WITHIN, |b| b.text_of("#current-room").filter(|t| t.is_empty()));
    type_line(&alice, "/join #general");
    alice.wait_until("#current-room to show general again", SHOWN_WITHIN, |b| {
        (b.text_of("#current-room")? == "general").then_some(())
    });
    type_line(&alice, "/msg carl psst");
    carl.wait_for(|l| l == "[DM from alice] psst");
    assert_eq!(error_bar(&alice), None, "an error after the IRC-style commands");
}

#[test]
fn a_registered_users_unread_counts_come_from_the_read_marker_and_survive_a_reload() {
    let server = TestServer::start(Store::Sqlite);
    let _log = ServerLogOnPanic(&server);
    let http = server.http.expect("the server logs its HTTP address");
    let mut owner = server.login("alice");
    owner.send("/register hunter22hunter");
    owner.expect("Registered alice. From now on, log in as alice with your password.");
    owner.send("/quit");
    owner.expect("Goodbye!");
    let mut carl = server.login("carl");
    carl.create("lobby");
    carl.create("other");
    carl.send("before alice came");
    carl.wait_for(|l| l == "[other] carl: before alice came");

    let alice = Browser::start();
    alice.navigate(&format!("http://{http}/"));
    alice.wait_until("the nickname form", SHOWN_WITHIN, |b| b.try_find("#nick-input").filter(|e| e.is_displayed()));
    alice.find("#nick-input").send_keys("alice");
    alice.find("#password-input").send_keys("hunter22hunter");
    alice.find("#nick-form button[type=submit]").click();
    let logged_in = |b: &Browser| (b.try_find("#chat-screen")?.is_displayed() && b.text_of("#me-nick")? == "alice").then_some(());
    alice.wait_until("the chat screen for alice", SHOWN_WITHIN, logged_in);
    // Seeing a room's messages moves the read marker past them.
    open_room(&alice, "other");
    wait_for_message(&alice, "carl", "before alice came");
    open_room(&alice, "lobby");

    carl.send("one");
    carl.wait_for(|l| l == "[other] carl: one");
    carl.send("two, @alice");
    carl.wait_for(|l| l == "[other] carl: two, @alice");
    alice.wait_until("the server's counts on other", Duration::from_secs(10), |b| {
        (badges(b, "other") == json!(["2", "@1"])).then_some(())
    });
    // They are the server's: a reload keeps them.
    alice.execute("location.reload();", vec![]);
    alice.wait_until("the chat screen after the reload", SHOWN_WITHIN, logged_in);
    alice.wait_until("the counts again after the reload", Duration::from_secs(10), |b| {
        (badges(b, "other") == json!(["2", "@1"]) && b.title() == "(2) Baby Discord").then_some(())
    });
    // Opening the room: the line above the first unread message; the marker moves.
    open_room(&alice, "other");
    alice.wait_until("the new-messages line above 'one'", SHOWN_WITHIN, |b| {
        let next = b.execute(
            "const line = document.getElementById('new-line');
             const next = line && line.nextElementSibling;
             return next ? next.querySelector('.content').textContent : null;",
            vec![],
        );
        (next == json!("one")).then_some(())
    });
    open_room(&alice, "lobby");
    alice.execute("location.reload();", vec![]);
    alice.wait_until("the chat screen after the second reload", SHOWN_WITHIN, logged_in);
    // The room list appears with the server's counts in it (never before them).
    alice.wait_until("other listed", SHOWN_WITHIN, |b| b.try_find("#room-list li[data-room=other]"));
    alice.wait_until("no unread on other", Duration::from_secs(10), |b| {
        (badges(b, "other") == json!(["", ""]) && b.title() == "#lobby · Baby Discord").then_some(())
    });
}

/// The page builds every node with `textContent` and `createElement`: no
/// script of it parses HTML, so no user text can ever become markup.
#[test]
fn the_page_script_never_parses_html() {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/www/app.js")).unwrap();
    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser", "createContextualFragment", "eval("] {
        assert!(!script.contains(sink), "www/app.js uses {sink}");
    }
}
