//! diskshadow scripts as a user writes them (`vss run FILE`): any text parses into commands
//! or into one syntax error naming a line of the script; nothing panics. Commands come out
//! in the order of their lines, and a script parses the same way every time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vss_emulator::script::parse;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let lines = text.lines().count();
    match parse(text) {
        Ok(cmds) => {
            let mut last = 0;
            for (line, _) in &cmds {
                assert!(*line > last && *line <= lines, "line {line} of {lines}");
                last = *line;
            }
            assert_eq!(parse(text).ok(), Some(cmds), "parsing is deterministic");
        }
        Err(e) => {
            assert!(
                e.line >= 1 && e.line <= lines,
                "error line {} of {lines}",
                e.line
            );
            assert!(e.is_syntax(), "parsing fails only on syntax: {e}");
        }
    }
});
