//! Shamir's secret sharing over GF(2^8), for secrets the daemon escrows k
//! of n itself (the sealed-secrets key, a static-seal key). OpenBao splits
//! its own root key; this is the same scheme for what OpenBao does not
//! hold.
//!
//! Each byte of the secret is the constant term of its own random
//! polynomial of degree `threshold - 1`; part `x` (1..=255) holds every
//! polynomial's value at `x`. Any `threshold` parts give the secret back by
//! Lagrange interpolation at 0; fewer say nothing about it (every secret is
//! equally likely given `threshold - 1` points). The field is AES's
//! (x^8 + x^4 + x^3 + x + 1), as in OpenBao's own `shamir` package.
//!
//! A part travels as text, `cz-shamir-v1:<threshold>:<x>:<hex of the
//! values>`, so that a custodian who opens theirs with `age -d` sees what
//! it is and `catalyst-zero escrow combine` can check the set before
//! combining. Parts carry no integrity check of the secret: the caller
//! compares the result with a fingerprint it recorded (the escrow does).

use std::fmt;

const PREFIX: &str = "cz-shamir-v1";

/// One part of a split secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Part {
    /// Parts needed to combine.
    pub threshold: u8,
    /// The evaluation point, 1..=255.
    pub x: u8,
    pub values: Vec<u8>,
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Part")
            .field("threshold", &self.threshold)
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

/// Why a split or a combination was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    #[error("threshold {threshold} of {parts} parts: need 1 <= threshold <= parts <= 255")]
    Shape { threshold: usize, parts: usize },
    #[error("an empty secret cannot be split")]
    Empty,
    #[error("not a part (`{PREFIX}:<threshold>:<x>:<hex>`): {0}")]
    Format(String),
    #[error("{given} distinct parts given, {threshold} needed")]
    TooFew { given: usize, threshold: usize },
    #[error("the parts do not belong together: {0}")]
    Mismatch(String),
}

/// Splits `secret` into `parts` parts, any `threshold` of which combine to it.
pub fn split(secret: &[u8], threshold: u8, parts: u8) -> Result<Vec<Part>, ShamirError> {
    if threshold == 0 || parts < threshold {
        return Err(ShamirError::Shape { threshold: threshold.into(), parts: parts.into() });
    }
    if secret.is_empty() {
        return Err(ShamirError::Empty);
    }
    let mut out: Vec<Part> = (1..=parts)
        .map(|x| Part { threshold, x, values: Vec::with_capacity(secret.len()) })
        .collect();
    let mut coefficients = vec![0u8; usize::from(threshold)];
    for &byte in secret {
        coefficients[0] = byte;
        rand::fill(&mut coefficients[1..]);
        for p in &mut out {
            p.values.push(evaluate(&coefficients, p.x));
        }
    }
    coefficients.fill(0);
    Ok(out)
}

/// The secret `parts` were split from. Duplicates (the same `x`) count
/// once; more parts than the threshold are fine.
pub fn combine(parts: &[Part]) -> Result<Vec<u8>, ShamirError> {
    let Some(first) = parts.first() else {
        return Err(ShamirError::TooFew { given: 0, threshold: 1 });
    };
    let threshold = usize::from(first.threshold);
    let mut distinct: Vec<&Part> = Vec::new();
    for p in parts {
        if p.threshold != first.threshold || p.values.len() != first.values.len() {
            return Err(ShamirError::Mismatch(format!(
                "part {} says {} of length {}, part {} says {} of length {}",
                first.x,
                first.threshold,
                first.values.len(),
                p.x,
                p.threshold,
                p.values.len()
            )));
        }
        match distinct.iter().find(|d| d.x == p.x) {
            Some(d) if d.values != p.values => {
                return Err(ShamirError::Mismatch(format!("two different parts {}", p.x)));
            }
            Some(_) => {}
            None => distinct.push(p),
        }
    }
    if distinct.len() < threshold {
        return Err(ShamirError::TooFew { given: distinct.len(), threshold });
    }
    let used = &distinct[..threshold];
    // Lagrange basis at 0: l_i = Π_{j≠i} x_j / (x_j - x_i); minus is xor.
    let basis: Vec<u8> = used
        .iter()
        .enumerate()
        .map(|(i, pi)| {
            used.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .fold(1u8, |acc, (_, pj)| mul(acc, div(pj.x, pj.x ^ pi.x)))
        })
        .collect();
    let secret = (0..first.values.len())
        .map(|b| used.iter().zip(&basis).fold(0u8, |acc, (p, l)| acc ^ mul(p.values[b], *l)))
        .collect();
    Ok(secret)
}

impl Part {
    /// The part as text.
    pub fn encode(&self) -> String {
        format!("{PREFIX}:{}:{}:{}", self.threshold, self.x, hex::encode(&self.values))
    }

    /// A part from its text (surrounding whitespace ignored).
    pub fn decode(text: &str) -> Result<Part, ShamirError> {
        let bad = |m: &str| ShamirError::Format(m.to_owned());
        let mut fields = text.trim().split(':');
        if fields.next() != Some(PREFIX) {
            return Err(bad("wrong prefix"));
        }
        let mut number = |what: &str| -> Result<u8, ShamirError> {
            fields.next().and_then(|f| f.parse().ok()).ok_or_else(|| bad(what))
        };
        let threshold = number("threshold")?;
        let x = number("x")?;
        let values = fields.next().and_then(|h| hex::decode(h).ok()).ok_or_else(|| bad("hex"))?;
        if fields.next().is_some() || threshold == 0 || x == 0 || values.is_empty() {
            return Err(bad("fields"));
        }
        Ok(Part { threshold, x, values })
    }
}

fn evaluate(coefficients: &[u8], x: u8) -> u8 {
    // Horner, highest degree first.
    coefficients.iter().rev().fold(0u8, |acc, &c| mul(acc, x) ^ c)
}

/// Multiplication in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1, without
/// secret-dependent branches or table lookups.
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        product ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    product
}

/// a / b for b ≠ 0: a · b^254 (b^255 = 1).
fn div(a: u8, b: u8) -> u8 {
    debug_assert!(b != 0, "division by zero in GF(2^8)");
    let mut inverse = 1u8;
    let mut base = b;
    let mut e = 254u8;
    while e > 0 {
        if e & 1 == 1 {
            inverse = mul(inverse, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    mul(a, inverse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_arithmetic() {
        // FIPS-197's worked example: {57} · {83} = {c1}.
        assert_eq!(mul(0x57, 0x83), 0xc1);
        for a in 1..=255u8 {
            assert_eq!(mul(a, div(1, a)), 1, "inverse of {a}");
            assert_eq!(div(mul(a, 0x53), 0x53), a);
        }
    }

    #[test]
    fn every_threshold_subset_combines_and_fewer_do_not() {
        let secret = b"-----BEGIN PRIVATE KEY-----\nnot really\n".to_vec();
        for (threshold, n) in [(1u8, 1u8), (2, 3), (3, 5), (2, 2), (5, 5)] {
            let parts = split(&secret, threshold, n).unwrap();
            assert_eq!(parts.len(), usize::from(n));
            // Every subset of exactly `threshold` parts.
            for mask in 0u32..(1 << n) {
                let subset: Vec<Part> = parts
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, p)| p.clone())
                    .collect();
                let r = combine(&subset);
                if subset.len() >= usize::from(threshold) {
                    assert_eq!(r.unwrap(), secret, "{threshold}/{n} mask {mask:b}");
                } else {
                    assert!(matches!(r, Err(ShamirError::TooFew { .. })), "{mask:b}");
                }
            }
        }
    }

    #[test]
    fn below_the_threshold_a_forged_set_gives_another_secret() {
        // threshold - 1 real parts plus any made-up part combine to some
        // other value: the real parts alone do not pin the secret down.
        let secret = [0x42u8; 16];
        let parts = split(&secret, 3, 5).unwrap();
        let forged = Part { threshold: 3, x: 9, values: vec![0; 16] };
        let r = combine(&[parts[0].clone(), parts[1].clone(), forged]).unwrap();
        assert_ne!(r, secret);
    }

    #[test]
    fn parts_round_trip_as_text_and_bad_sets_are_refused() {
        let parts = split(b"k", 2, 3).unwrap();
        let text = parts[1].encode();
        assert!(text.starts_with("cz-shamir-v1:2:2:"));
        assert_eq!(Part::decode(&format!(" {text}\n")).unwrap(), parts[1]);
        for bad in ["", "cz-shamir-v1:2:0:ab", "cz-shamir-v2:2:1:ab", "cz-shamir-v1:2:1:zz"] {
            assert!(Part::decode(bad).is_err(), "{bad:?}");
        }
        assert!(format!("{:?}", parts[0]).contains("threshold"));
        assert!(!format!("{:?}", parts[0]).contains(&hex::encode(&parts[0].values)));
        let other = split(b"kk", 2, 3).unwrap();
        assert!(matches!(
            combine(&[parts[0].clone(), other[1].clone()]),
            Err(ShamirError::Mismatch(_))
        ));
        assert!(matches!(
            combine(&[parts[0].clone(), parts[0].clone()]),
            Err(ShamirError::TooFew { given: 1, threshold: 2 })
        ));
        assert_eq!(split(b"", 1, 1), Err(ShamirError::Empty));
        assert!(matches!(split(b"x", 3, 2), Err(ShamirError::Shape { .. })));
    }
}
