use super::super::parser::parse;
use super::*;

fn one(src: &str) -> Result<Instruction, String> {
    from_node(&parse(src).unwrap().children[0])
}

#[test]
fn flags_are_checked_per_instruction() {
    assert!(one("COPY --from=a x y").is_ok());
    assert!(one("RUN --from=a x")
        .unwrap_err()
        .contains("unknown flag: --from"));
    assert!(one("COPY --from x y")
        .unwrap_err()
        .contains("missing a value"));
    assert!(one("COPY --link=maybe x y")
        .unwrap_err()
        .contains("boolean"));
    assert!(one("RUN --mount=type=cache echo")
        .unwrap_err()
        .contains("target is required"));
}

#[test]
fn unknown_instruction_suggests() {
    assert_eq!(
        one("RUNN echo").unwrap_err(),
        "unknown instruction \"RUNN\" (did you mean RUN?)"
    );
}

#[test]
fn go_durations() {
    assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
    assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
    assert_eq!(parse_go_duration("5"), None);
    assert_eq!(parse_go_duration("1.001s"), Some(1_001_000_000));
    assert_eq!(parse_go_duration("0.3s"), Some(300_000_000));
    assert_eq!(parse_go_duration("1.5h"), Some(5_400_000_000_000));
    assert_eq!(parse_go_duration("2h45m0.5s"), Some(9_900_500_000_000));
    assert_eq!(parse_go_duration("10\u{b5}s"), Some(10_000));
    assert_eq!(
        parse_go_duration("9223372036854775807ns"),
        Some(i64::MAX as u64)
    );
    assert_eq!(parse_go_duration("9223372036854775808ns"), None);
    assert_eq!(parse_go_duration("3000000h"), None, "overflow is an error");
    assert_eq!(parse_go_duration(".s"), None);
    assert_eq!(parse_go_duration("1"), None);
    assert_eq!(parse_go_duration("1x"), None);
}
