//! The static candidate list: from code, from text and files, and every
//! mistake reported with its line; `parse_spec` for the command line.

use std::net::SocketAddr;

use kwik_discovery::{
    Candidate, Discovery, DiscoveryError, DiscoverySpec, SpecOptions, StaticList, parse_spec,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The line number and message of a `BadLine` error.
fn bad_line(text: &str) -> (usize, String) {
    match StaticList::parse(text) {
        Err(DiscoveryError::BadLine { line, message, .. }) => (line, message),
        other => panic!("expected a bad line in {text:?}, got {other:?}"),
    }
}

#[test]
fn from_code_sorted_deduplicated_and_bounded() {
    let list = StaticList::new(vec![
        Candidate::new(addr("127.0.0.3:4433"), "c").with_preference(10, 5),
        Candidate::new(addr("127.0.0.1:4433"), "a").with_preference(10, 50),
        Candidate::new(addr("127.0.0.2:4433"), "b").with_preference(1, 0),
        // Same address as "a", worse priority: dropped.
        Candidate::new(addr("127.0.0.1:4433"), "dup").with_preference(20, 0),
    ]);
    let names: Vec<&str> = list
        .candidates()
        .iter()
        .map(|c| c.server_name.as_str())
        .collect();
    assert_eq!(names, ["b", "a", "c"]);

    let bounded = StaticList::with_limit(list.candidates().to_vec(), 2);
    assert_eq!(bounded.candidates(), &list.candidates()[..2]);

    // Used through the trait object, as the command line does.
    let source: Box<dyn Discovery> = Box::new(list.clone());
    assert_eq!(block_on(source.discover()).unwrap(), list.candidates());
}

#[test]
fn parses_text_with_comments_blank_lines_and_options() {
    let text = "\
# kwik secondaries
127.0.0.1:4434 s1.example.test   # the first one

  [::1]:4435   s2.example.test priority=5 weight=70 region=eu-west
127.0.0.2:4436 127.0.0.2 region=lab weight=9
";
    let list = StaticList::parse(text).unwrap();
    assert_eq!(
        list.candidates(),
        [
            Candidate::new(addr("127.0.0.2:4436"), "127.0.0.2")
                .with_preference(0, 9)
                .with_region("lab"),
            Candidate::new(addr("127.0.0.1:4434"), "s1.example.test"),
            Candidate::new(addr("[::1]:4435"), "s2.example.test")
                .with_preference(5, 70)
                .with_region("eu-west"),
        ]
    );
    assert!(
        StaticList::parse("# nothing\n\n   \n")
            .unwrap()
            .candidates()
            .is_empty()
    );
}

#[test]
fn reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.list");
    std::fs::write(&good, "127.0.0.1:4434 localhost priority=1\n").unwrap();
    let list = StaticList::from_file(&good).unwrap();
    assert_eq!(
        list.candidates(),
        [Candidate::new(addr("127.0.0.1:4434"), "localhost").with_preference(1, 0)]
    );
    assert_eq!(list.describe(), format!("static:{}", good.display()));

    let bad = dir.path().join("bad.list");
    std::fs::write(&bad, "# ok\n127.0.0.1:4434 a\nnot-an-address a\n").unwrap();
    let err = StaticList::from_file(&bad).unwrap_err();
    assert!(
        matches!(&err, DiscoveryError::BadLine { line: 3, origin, .. } if origin == &bad.display().to_string()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(", line 3: expected an address"),
        "{err}"
    );

    let missing = dir.path().join("missing.list");
    let err = StaticList::from_file(&missing).unwrap_err();
    assert!(
        matches!(err, DiscoveryError::Read { ref path, .. } if path == &missing),
        "{err:?}"
    );

    let binary = dir.path().join("binary.list");
    std::fs::write(&binary, [0xff, 0xfe, b'\n']).unwrap();
    let err = StaticList::from_file(&binary).unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[test]
fn every_mistake_is_reported_with_its_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("localhost:4433 a", 1, "expected an address"),
        ("127.0.0.1 a", 1, "expected an address"),
        ("\n127.0.0.1:0 a", 2, "port 0"),
        ("# c\n\n127.0.0.1:4433", 3, "missing SERVER_NAME"),
        ("127.0.0.1:4433 priority=1", 1, "missing SERVER_NAME"),
        (
            "127.0.0.1:4433 a priority=70000",
            1,
            "priority must be an integer",
        ),
        ("127.0.0.1:4433 a weight=-1", 1, "weight must be an integer"),
        (
            "127.0.0.1:4433 a weight=1 weight=2",
            1,
            "option weight given twice",
        ),
        (
            "127.0.0.1:4433 a region=x region=y",
            1,
            "option region given twice",
        ),
        (
            "127.0.0.1:4433 a colour=blue",
            1,
            "unknown option \"colour\"",
        ),
        ("127.0.0.1:4433 a fast", 1, "expected KEY=VALUE"),
        ("127.0.0.1:4433 a region=", 1, "empty region"),
        (
            "127.0.0.1:4433 a\n127.0.0.2:4433 b\n127.0.0.1:4433 c",
            3,
            "address 127.0.0.1:4433 already listed on line 1",
        ),
    ];
    for (text, line, needle) in cases {
        let (got_line, message) = bad_line(text);
        assert_eq!(got_line, *line, "{text:?}: {message}");
        assert!(
            message.contains(needle),
            "{text:?}: {message:?} lacks {needle:?}"
        );
    }
    let long_name = format!("127.0.0.1:4433 {}", "a".repeat(254));
    assert!(bad_line(&long_name).1.contains("longer than 253"));
}

#[test]
fn a_list_longer_than_its_limit_is_refused() {
    let text: String = (1..=5)
        .map(|i| format!("127.0.0.{i}:4433 s{i}\n"))
        .collect();
    assert_eq!(
        StaticList::parse_with_limit(&text, 5)
            .unwrap()
            .candidates()
            .len(),
        5
    );
    let err = StaticList::parse_with_limit(&text, 4).unwrap_err();
    assert_eq!(
        err,
        DiscoveryError::TooManyCandidates {
            origin: "<string>".into(),
            line: 5,
            max: 4
        }
    );
    assert_eq!(
        err.to_string(),
        "<string>, line 5: more than 4 candidates (the limit)"
    );
}

#[test]
fn specs_for_the_command_line() {
    assert_eq!(
        parse_spec("static:/etc/kwik/secondaries").unwrap(),
        DiscoverySpec::Static("/etc/kwik/secondaries".into())
    );
    assert_eq!(
        parse_spec("srv:_kwik._udp.example.test.").unwrap(),
        DiscoverySpec::Srv("_kwik._udp.example.test".into())
    );
    assert_eq!(
        parse_spec("mdns:_kwik._udp.local").unwrap(),
        DiscoverySpec::Mdns("_kwik._udp.local.".into())
    );
    assert_eq!(
        parse_spec("mdns:").unwrap(),
        DiscoverySpec::Mdns("_kwik._udp.local.".into())
    );
    for bad in [
        "",
        "static:",
        "srv:",
        "dns:x",
        "/etc/list",
        "mdns:_kwik._udp.example.com",
    ] {
        let err = parse_spec(bad).unwrap_err();
        assert!(
            matches!(
                err,
                DiscoveryError::BadSpec { .. } | DiscoveryError::BadName { .. }
            ),
            "{bad:?}: {err:?}"
        );
    }
    assert!(matches!(
        parse_spec("srv:bad..name").unwrap_err(),
        DiscoveryError::BadName { .. }
    ));

    // A static spec reads its file when built, and reports its mistakes then.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("list");
    std::fs::write(&file, "127.0.0.1:4434 127.0.0.1\n").unwrap();
    let spec = parse_spec(&format!("static:{}", file.display())).unwrap();
    let source = spec.build(&SpecOptions::default()).unwrap();
    assert_eq!(
        block_on(source.discover()).unwrap(),
        [Candidate::new(addr("127.0.0.1:4434"), "127.0.0.1")]
    );
    std::fs::write(&file, "127.0.0.1:4434\n").unwrap();
    assert!(matches!(
        spec.build(&SpecOptions::default()),
        Err(DiscoveryError::BadLine { line: 1, .. })
    ));
}
