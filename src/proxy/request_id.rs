//! `X-Request-Id`: a sane client value is kept, anything else is replaced by a fresh random id.

/// Longest client-sent id that is kept.
const MAX_LEN: usize = 128;

/// The id to use for this request: the client's when it is 1–128 characters of `[A-Za-z0-9._:-]`
/// (UUIDs, ULIDs, trace ids), else a new 128-bit random id in hex.
pub fn settle(client_value: Option<&[u8]>) -> String {
    if let Some(b) = client_value {
        if !b.is_empty()
            && b.len() <= MAX_LEN
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
        {
            // Checked ASCII above.
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    generate()
}

fn generate() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, byte) in out
        .chunks_exact_mut(2)
        .zip(rand::random::<u128>().to_be_bytes())
    {
        pair[0] = HEX[(byte >> 4) as usize];
        pair[1] = HEX[(byte & 0xf) as usize];
    }
    // Hex digits only, so this never fails.
    std::str::from_utf8(&out)
        .map(str::to_owned)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_values_and_replaces_others() {
        let keep = "3f2b8c1e-7a6d-4c2b-9f10-1234567890ab";
        assert_eq!(settle(Some(keep.as_bytes())), keep);
        for bad in ["", "has space", "<script>", &"x".repeat(129)] {
            let id = settle(Some(bad.as_bytes()));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32);
        }
        assert_ne!(settle(None), settle(None));
        let fresh = settle(None);
        assert!(fresh
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
