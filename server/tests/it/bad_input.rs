//! Every kind of bad input gets its 4xx with a JSON body, stores nothing,
//! and the next good request works.

use handoff_core::sync::wire::{self, DocChange, PushReply, PushRequest, RefusalCode, Verdict};

use crate::access::JsonBody;
use crate::harness::*;

/// The relay's feed length, over a connection of its own: one a bad
/// request went over may have been closed by the relay (an oversized body
/// is answered before it is read), and reusing it failed now and then.
fn feed_length(rt: &tokio::runtime::Runtime, url: &str) -> u64 {
    rt.block_on(async {
        let text = reqwest::Client::new()
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("handoff_feed_length "))
            .unwrap()
            .parse()
            .unwrap()
    })
}

#[test]
fn bad_requests_get_a_4xx_with_a_json_error_and_change_nothing() {
    let relay = Relay::start();
    let (team, invite) = relay.create_team("Clinic", "max");
    let max = Phone::enrolled(&relay, &invite);
    let task = max
        .store
        .delegate(task_for("Call", Some("max"), None))
        .unwrap();
    max.sync();
    let token = max.settings().token;
    let (rt, _) = http();
    // A new connection for each request: the relay may close one that an
    // oversized body went over, and a request reusing it would fail.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let before = feed_length(&rt, &relay.url);
    let url = &relay.url;
    // The relay writes the team's document as its own actor, which every
    // member sees: no device may enrol as it.
    let relay_actor: String = rusqlite::Connection::open(relay.db())
        .unwrap()
        .query_row("SELECT relay_actor FROM teams", [], |r| r.get(0))
        .unwrap();
    let zed = relay.invite(&team, "zed", "front_desk");

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed push body",
            client
                .post(format!("{url}/v1/push"))
                .bearer_auth(&token)
                .body(vec![0xff; 7]),
            400,
            "bad_body",
        ),
        (
            "oversized push",
            client
                .post(format!("{url}/v1/push"))
                .bearer_auth(&token)
                .body(vec![0u8; wire::MAX_BODY + 1]),
            413,
            "too_large",
        ),
        (
            "no token",
            client.get(format!("{url}/v1/pull?cursor=0")),
            401,
            "invalid_token",
        ),
        (
            "bad token",
            client
                .get(format!("{url}/v1/pull?cursor=0"))
                .bearer_auth("0".repeat(64)),
            401,
            "invalid_token",
        ),
        (
            "bad cursor",
            client
                .get(format!("{url}/v1/pull?cursor=minus-one"))
                .bearer_auth(&token),
            400,
            "bad_query",
        ),
        (
            "a cursor's tag past 32 bits",
            client
                .get(format!("{url}/v1/pull?cursor=1&at=4294967296"))
                .bearer_auth(&token),
            400,
            "bad_query",
        ),
        (
            "a page size that is not a number",
            client
                .get(format!("{url}/v1/pull?cursor=0&page=half"))
                .bearer_auth(&token),
            400,
            "bad_query",
        ),
        (
            "a repair's page size that is not a number",
            client
                .post(format!("{url}/v1/repair?page=-1"))
                .bearer_auth(&token)
                .body(wire::encode(&wire::RepairRequest {
                    doc: "nope".into(),
                    have: vec![],
                })),
            400,
            "bad_query",
        ),
        (
            "unknown document",
            client
                .post(format!("{url}/v1/repair"))
                .bearer_auth(&token)
                .body(wire::encode(&wire::RepairRequest {
                    doc: "nope".into(),
                    have: vec![],
                })),
            404,
            "not_found",
        ),
        (
            "malformed enrolment",
            client
                .post(format!("{url}/v1/enrol"))
                .body("{\"invite\": 3}"),
            400,
            "bad_body",
        ),
        (
            "oversized enrolment (read before anyone is authenticated)",
            client
                .post(format!("{url}/v1/enrol"))
                .body(vec![b' '; 64 * 1024]),
            413,
            "too_large",
        ),
        (
            "unknown invite",
            client.post(format!("{url}/v1/enrol")).body(format!(
                "{{\"invite\": \"0000-0000-0000-0000\", \"actor\": \"abcd\", \"token\": \"{}\"}}",
                "ab".repeat(32)
            )),
            404,
            "not_found",
        ),
        (
            "an enrolment whose token is not 32 bytes of hex",
            client.post(format!("{url}/v1/enrol")).body(format!(
                "{{\"invite\": \"{zed}\", \"actor\": \"abcd\", \"token\": \"secret\"}}"
            )),
            400,
            "bad_token",
        ),
        (
            "the relay's own actor",
            client.post(format!("{url}/v1/enrol")).body(format!(
                "{{\"invite\": \"{zed}\", \"actor\": \"{relay_actor}\", \"token\": \"{}\"}}",
                "ab".repeat(32)
            )),
            409,
            "conflict",
        ),
        (
            "unknown endpoint",
            client.get(format!("{url}/v1/everything")),
            404,
            "not_found",
        ),
        (
            "wrong method",
            client.get(format!("{url}/v1/push")),
            405,
            "method_not_allowed",
        ),
    ];
    let mut expected = before;
    for (what, request, status, code) in cases {
        rt.block_on(async {
            let r = request.send().await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{what}");
            let body: wire::ErrorBody = r.json_body().await;
            assert_eq!(body.code, code, "{what}");
        });
        assert_eq!(feed_length(&rt, url), expected, "{what} stored nothing");
        // The next good request works.
        max.store.comment(&task, "next").unwrap();
        assert_eq!(max.sync().pushed, 1, "after {what}");
        expected += 1;
        assert_eq!(feed_length(&rt, url), expected, "after {what}");
    }

    // Bytes that are not an automerge change: refused per change, nothing stored.
    rt.block_on(async {
        let r = client
            .post(format!("{url}/v1/push"))
            .bearer_auth(&token)
            .body(wire::encode(&PushRequest {
                changes: vec![DocChange {
                    doc: task.clone(),
                    bytes: b"not a change".to_vec(),
                }],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let reply: PushReply = wire::decode(&r.bytes().await.unwrap()).unwrap();
        assert!(matches!(
            reply.verdicts[0],
            Verdict::Refused {
                code: RefusalCode::InvalidChange,
                ..
            }
        ));
    });
    assert_eq!(feed_length(&rt, url), expected);

    // Invites: used once only, and not after they expire.
    let code = relay.invite(&team, "ana", "front_desk");
    let _ana = Phone::enrolled(&relay, &code);
    let bobs_invite = |hours: &'static str| {
        [
            "invite",
            "--team",
            team.as_str(),
            "--user",
            "bob",
            "--name",
            "Bob",
            "--role",
            "front_desk",
            "--hours",
            hours,
        ]
    };
    let expired = relay.admin(&bobs_invite("1"));
    // An hour later, as the relay's file has it (an invite lasts at least
    // an hour: `--hours 0` is refused).
    rusqlite::Connection::open(relay.db())
        .unwrap()
        .execute(
            "UPDATE invites SET expires_at = expires_at - 3600001 WHERE user_id = 'bob'",
            [],
        )
        .unwrap();
    for hours in ["0", "745"] {
        let refused = admin_fails(&relay.db(), &bobs_invite(hours));
        assert!(refused.contains("an invite lasts"), "{refused}");
    }
    // A mistyped database path is an error, not a new empty database.
    let mistyped = relay.db().with_file_name("relay-typo.db");
    for args in [
        &["teams"][..],
        &["devices", "--team", &team],
        &["revoke", "--device", "abcd"],
        &bobs_invite("1"),
    ] {
        let refused = admin_fails(&mistyped, args);
        assert!(refused.contains("no relay database"), "{args:?}: {refused}");
        assert!(!mistyped.exists(), "{args:?} made a database");
    }
    // Devices of a mistyped team: an error, not an empty list.
    let refused = admin_fails(&relay.db(), &["devices", "--team", "no-such-team"]);
    assert!(refused.contains("no team no-such-team"), "{refused}");
    // A first admin the invite would refuse makes no team.
    let teams_before = relay.admin(&["teams"]);
    let refused = admin_fails(
        &relay.db(),
        &["create-team", "--name", "Other", "--admin", "bad id!"],
    );
    assert!(refused.contains("a user id is"), "{refused}");
    assert_eq!(relay.admin(&["teams"]), teams_before);
    // `create-team` run twice by mistake: the second names the first, and
    // makes nothing; `--again` says another team of that name is meant.
    let refused = admin_fails(&relay.db(), &["create-team", "--name", " clinic "]);
    assert!(
        refused.contains(&team) && refused.contains("--again"),
        "{refused}"
    );
    assert_eq!(relay.admin(&["teams"]), teams_before);
    let again = relay.admin(&["create-team", "--name", "Clinic", "--again"]);
    assert!(
        again.starts_with("team ") && !again.contains(&team),
        "{again}"
    );
    assert_eq!(relay.admin(&["teams"]).lines().count(), 2);
    for (invite, status, code) in [
        (code.as_str(), 410, "invite_used"),
        (expired.trim(), 410, "invite_expired"),
    ] {
        let d = Phone::new();
        match d.engine.enrol(&relay.url, invite) {
            Err(handoff_core::Error::Relay {
                status: s, code: c, ..
            }) => {
                assert_eq!((s, c.as_str()), (status, code));
            }
            other => panic!("expected {code}, got {other:?}"),
        }
        assert!(d.store.relay_settings().unwrap().is_none());
    }
    max.store.comment(&task, "still fine").unwrap();
    assert_eq!(max.sync().pushed, 1);
}

#[test]
fn an_address_that_keeps_guessing_invites_is_turned_away_and_others_are_not() {
    let relay = Relay::start();
    let (team, _) = relay.create_team("Clinic", "max");
    let invite = relay.invite(&team, "ana", "front_desk");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Another loopback address: the guesser.
    let guesser = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let enrol = |client: &reqwest::Client, code: &str, actor: &str| {
        rt.block_on(async {
            let r = client
                .post(format!("{}/v1/enrol", relay.url))
                .body(
                    serde_json::json!({"invite": code, "actor": actor, "token": "ab".repeat(32)})
                        .to_string(),
                )
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: wire::ErrorBody = r.json_body().await;
            (status, body.code)
        })
    };
    for i in 0..20 {
        let (status, code) = enrol(&guesser, &format!("0000-0000-0000-{i:04}"), "aa11");
        assert_eq!((status, code.as_str()), (404, "not_found"));
    }
    // Now even a good invite is not looked at from there, and stays unused.
    assert_eq!(
        enrol(&guesser, &invite, "aa11"),
        (429, "too_many_attempts".to_owned())
    );
    // A phone elsewhere enrols with it.
    let ana = Phone::enrolled(&relay, &invite);
    assert!(ana.store.team().is_some());
}

/// A compressed change chunk (which automerge would inflate whole, with no
/// limit, before anything checks it) is refused as invalid, uninflated; the
/// same change in its plain form, as phones send it, is stored.
#[test]
fn a_compressed_change_is_refused_before_it_is_inflated() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    let note = "Patient asked us to call back after lunch on weekdays. ".repeat(30);
    ana.store.comment(&task, &note).unwrap();
    let queued = ana.store.outbox(10).unwrap();
    assert_eq!(queued.len(), 1);
    let mut change = automerge::Change::from_bytes(queued[0].bytes.clone()).unwrap();
    let compressed = change.bytes().to_vec();
    assert!(compressed.len() < queued[0].bytes.len());
    let verdicts =
        RawPush::to(&relay).verdicts(&ana.settings().token, vec![doc_change(&task, compressed)]);
    assert!(
        matches!(
            &verdicts[..],
            [wire::Verdict::Refused {
                code: wire::RefusalCode::InvalidChange,
                ..
            }]
        ),
        "{verdicts:?}"
    );
    assert_eq!(ana.sync().pushed, 1);
    max.sync();
    assert_eq!(
        max.store.task_detail(&task).unwrap().state.comments.len(),
        1
    );
}

/// Text longer than a phone accepts (a comment of 10,001 characters, made
/// by hand: the store refuses to write one) is refused as invalid, and
/// nothing of it reaches another phone.
#[test]
fn text_longer_than_a_phone_accepts_is_refused() {
    use handoff_core::{task_doc, Action, Error, Event};

    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    let long = "x".repeat(handoff_core::input::MAX_TEXT + 1);
    assert!(matches!(
        ana.store.comment(&task, &long),
        Err(Error::InvalidInput(_))
    ));

    let (rt, _) = http();
    let token = ana.settings().token;
    let actor = ana.store.device_actor();
    let mut doc = task_doc_as(&relay, &[&ana], &task, &ana);
    let (events, _) = task_doc::events(&doc);
    assert_eq!(events.len(), 1, "the task as ana has it");
    let comment = Event::next(
        &events,
        &actor,
        "ana",
        events[0].at + 1,
        Action::Commented { text: long },
    );
    task_doc::append(&mut doc, &comment).unwrap();
    let bytes = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let before = feed_length(&rt, &relay.url);
    let verdicts = RawPush::to(&relay).verdicts(&token, vec![doc_change(&task, bytes)]);
    match &verdicts[..] {
        [Verdict::Refused { code, reason }] => {
            assert_eq!(*code, RefusalCode::InvalidChange);
            assert!(reason.contains("comment is longer than"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(feed_length(&rt, &relay.url), before);
    ana.store.comment(&task, "called back, all well").unwrap();
    assert_eq!(ana.sync().pushed, 1, "the next good change goes through");
    max.sync();
    let comments = max.store.task_detail(&task).unwrap().state.comments;
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].text, "called back, all well");
}

/// A push sent over a raw connection, paced by `send` (the head, then the
/// body's bytes as `send` writes them); what came back before the relay
/// closed the connection, or within 20 s.
fn raw_push(
    relay: &Relay,
    token: &str,
    body: &[u8],
    send: impl FnOnce(&mut std::net::TcpStream, &[u8]),
) -> String {
    use std::io::{Read, Write};
    let addr = relay.url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        wire::CONTENT_TYPE,
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    send(&mut conn, body);
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

/// A body that stops arriving is given up once it has paused longer than
/// the relay allows (`--read-pause-secs`): 408 `body_timeout` with a JSON
/// body, nothing stored, the connection let go. A slow body that keeps
/// coming is not: only a pause counts, not the time the body takes.
#[test]
fn a_body_that_stops_arriving_is_given_up_and_a_slow_one_is_not() {
    use std::io::Write;
    let relay = Relay::start_with(&["--read-pause-secs", "1"]);
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call back", "ana");
    ana.store
        .log_call(&task, call(handoff_core::CallOutcome::NoAnswer))
        .unwrap();
    let change = ana.store.outbox(10).unwrap().remove(0);
    let body = wire::encode(&PushRequest {
        changes: vec![doc_change(&change.doc_id, change.bytes.clone())],
    });
    let token = ana.settings().token;
    let (rt, _) = http();
    let before = feed_length(&rt, &relay.url);

    let stalled = raw_push(&relay, &token, &body, |conn, body| {
        conn.write_all(&body[..body.len() / 2]).unwrap();
    });
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    assert!(stalled.contains("\"code\":\"body_timeout\""), "{stalled}");
    assert_eq!(feed_length(&rt, &relay.url), before, "nothing stored");

    // Eight pieces 400 ms apart: three times the pause in all.
    let slow = raw_push(&relay, &token, &body, |conn, body| {
        for piece in body.chunks(body.len().div_ceil(8)) {
            std::thread::sleep(std::time::Duration::from_millis(400));
            conn.write_all(piece).unwrap();
        }
    });
    assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");
    assert_eq!(feed_length(&rt, &relay.url), before + 1);
    assert_eq!(ana.sync().pushed, 1, "the phone's own push is a duplicate");
}

/// A connection whose request head does not arrive in time is closed,
/// whether its client sends the head a byte at a time or sends nothing at
/// all (`--read-pause-secs`); the relay goes on serving.
#[test]
fn a_connection_whose_request_head_does_not_arrive_is_closed() {
    use std::io::{Read, Write};
    let relay = Relay::start_with(&["--read-pause-secs", "1"]);
    let addr = relay.url.trim_start_matches("http://").to_owned();
    let closed_within = |conn: &mut std::net::TcpStream| {
        conn.set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        // EOF (or a reset): the relay let go of it.
        let gone = match conn.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(gone, "the connection is still open after 15 s");
        started.elapsed()
    };
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    assert!(closed_within(&mut idle) < std::time::Duration::from_secs(10));
    let mut trickling = std::net::TcpStream::connect(&addr).unwrap();
    let trickle = {
        let mut conn = trickling.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in b"GET /health HTTP/1.1\r\nhost: relay\r\nx-slow: " {
                if conn.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        })
    };
    assert!(closed_within(&mut trickling) < std::time::Duration::from_secs(10));
    trickle.join().unwrap();
    let (rt, _) = http();
    assert_eq!(feed_length(&rt, &relay.url), feed_length(&rt, &relay.url));
}

/// The relay speaks HTTP/1.1 only, where every request's head is bounded
/// by the read pause: a client that opens with HTTP/2's preface (prior
/// knowledge, as h2c clients do) gets no HTTP/2 frame back, its
/// connection is let go, and the relay goes on serving.
#[test]
fn a_connection_that_speaks_http2_gets_no_http2() {
    use std::io::{Read, Write};
    let relay = Relay::start_with(&["--read-pause-secs", "1"]);
    let addr = relay.url.trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    // The preface, then an empty SETTINGS frame.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let started = std::time::Instant::now();
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the connection is still open after {:?}: {e}",
                started.elapsed()
            ),
        }
    }
    // An HTTP/2 server answers with its own SETTINGS frame (type 4).
    assert!(
        reply.len() < 9 || reply[3] != 4,
        "the relay spoke HTTP/2: {reply:?}"
    );
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let (rt, _) = http();
    assert_eq!(feed_length(&rt, &relay.url), feed_length(&rt, &relay.url));
}

/// An enrolment (from anyone, before any token) gets one pause in all for
/// its body, not a push's ten minutes: trickled within the pause but for
/// longer than it, it is given up (408), and the invite is still good.
#[test]
fn an_enrolment_body_trickled_past_the_pause_is_given_up() {
    use std::io::{Read, Write};
    let relay = Relay::start_with(&["--read-pause-secs", "1"]);
    let (team, _) = relay.create_team("Clinic", "max");
    let invite = relay.invite(&team, "ana", "clinical_assistant");
    let body = format!(
        "{{\"invite\": \"{invite}\", \"actor\": \"{}\", \"token\": \"{}\"}}",
        "ab".repeat(16),
        "cd".repeat(32)
    );
    let addr = relay.url.trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        conn,
        "POST /v1/enrol HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A byte every 400 ms, the whole body (~30 s) unless the relay gives
    // up first: within the pause, past it in all.
    let trickle = {
        let mut conn = conn.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in body.bytes() {
                if conn.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(400));
            }
        })
    };
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    // What the relay sent before it closed (a reset may follow).
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    trickle.join().unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"code\":\"body_timeout\""), "{reply}");
    // Nothing was taken: the invite still enrols a phone.
    Phone::enrolled(&relay, &invite);
}
