//! Fuzz target `sdp_crypto`: `mohd::sip::sdes` on `a=crypto` values, one per input line.
//!
//! Every line goes through `CryptoLine::parse`; a line that parses must print (`Display`, our
//! answer's form) as text that parses back to the same tag, suite and key. The lines together
//! go through `choose` (the offer's first usable line, or the first line's reason) and, as the
//! answer to an offer of the lines that parsed, through `from_answer`.

use mohd::sip::sdes::{self, CryptoLine};

/// The target's body: panics when a check fails.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let values: Vec<&str> = text.split('\n').collect();
    let mut parsed = Vec::new();
    for value in &values {
        let Ok(line) = CryptoLine::parse(value) else {
            continue;
        };
        let printed = line.to_string();
        match CryptoLine::parse(&printed) {
            Ok(again) => assert_eq!(again, line, "printed {printed:?} from {value:?}"),
            Err(e) => panic!("our own line {printed:?} does not parse: {e}"),
        }
        parsed.push(line);
    }
    match sdes::choose(values.iter().copied()) {
        Ok(chosen) => assert_eq!(Some(&chosen), parsed.first()),
        Err(_) => assert!(parsed.is_empty()),
    }
    for value in &values {
        if let Ok(params) = sdes::from_answer(&parsed, value) {
            assert!(
                parsed
                    .iter()
                    .any(|l| l.key == params.ours && l.suite == params.suite)
            );
        }
    }
}
