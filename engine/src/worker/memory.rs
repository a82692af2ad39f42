//! A job refused up front when its outputs and decoding would not fit in memory: an
//! allocation failure aborts the process (Rust cannot catch it), so the only way a job
//! "fails with a message" instead is to be measured against the free memory before it runs.

use crate::loader::card::ModelCard;
use crate::{Error, Result};

/// Candidates decoded at once by the VQGAN (see `worker::decode`).
pub(super) const DECODE_BATCH: usize = 4;

/// Live decoder tensors of the widest size at once (input, normalised, convolved, residual,
/// upsampled, and the allocator's slack), a generous count.
const LIVE_TENSORS: u64 = 6;

/// Bytes a job holds at its peak, roughly: every candidate as a full-size RGB picture twice
/// (the generated window composited into a copy of the image, and the copy a caller keeps),
/// plus the VQGAN decoder's widest activation for [`DECODE_BATCH`] candidates. The
/// transformers' caches are small beside these and left out.
pub fn job_bytes(card: &ModelCard, candidates: usize, picture: (u32, u32)) -> u64 {
    let dd = card
        .vqgan
        .decoder_ddconfig
        .as_ref()
        .unwrap_or(&card.vqgan.ddconfig);
    let levels = dd.ch_mult.len().max(1);
    let side = (card.grid_side() as u64) << (levels - 1).min(16);
    let widest = dd
        .ch_mult
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let s = side >> (levels - 1 - i).min(63);
            (dd.ch as u64)
                .saturating_mul(m as u64)
                .saturating_mul(s * s)
        })
        .max()
        .unwrap_or(0);
    let decode = widest
        .saturating_mul(4 * LIVE_TENSORS)
        .saturating_mul(candidates.min(DECODE_BATCH) as u64);
    let pictures = u64::from(picture.0) * u64::from(picture.1) * 3 * 2;
    decode.saturating_add(pictures.saturating_mul(candidates as u64))
}

/// Refuses a job of `candidates` on a `picture` that needs more than `available` bytes,
/// naming both and how many candidates would fit.
pub fn check_job_memory(
    card: &ModelCard,
    candidates: usize,
    picture: (u32, u32),
    available: u64,
) -> Result<()> {
    let needed = job_bytes(card, candidates, picture);
    if needed <= available {
        return Ok(());
    }
    let fits = (1..candidates)
        .rev()
        .find(|&n| job_bytes(card, n, picture) <= available);
    let gb = |b: u64| b as f64 / 1e9;
    let advice = match fits {
        Some(n) => format!("{n} candidates would fit"),
        None => {
            "even one candidate does not fit: use a smaller picture or close other programs".into()
        }
    };
    Err(Error::Input(format!(
        "this job needs about {:.1} GB of memory ({candidates} candidates of {}×{} and their \
         decoding), but only {:.1} GB are available; {advice}",
        gb(needed),
        picture.0,
        picture.1,
        gb(available)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden_card() -> ModelCard {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/model/model.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn job_bytes_grow_with_candidates_and_picture() {
        let card = golden_card();
        let one = job_bytes(&card, 1, (512, 512));
        assert!(one > 512 * 512 * 3 * 2, "{one}");
        assert!(job_bytes(&card, 8, (512, 512)) > one);
        assert!(job_bytes(&card, 1, (4096, 4096)) > one);
        // Decoding is batched by four: past that only the pictures add up.
        let (a, b) = (job_bytes(&card, 8, (64, 64)), job_bytes(&card, 9, (64, 64)));
        assert_eq!(b - a, 64 * 64 * 6);
    }

    #[test]
    fn a_job_that_does_not_fit_is_refused_with_the_numbers() {
        let card = golden_card();
        let picture = (16384, 16384);
        let available = 24_000_000_000;
        assert!(check_job_memory(&card, 4, picture, available).is_ok());
        let err = check_job_memory(&card, 64, picture, available)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("about 103.2 GB")
                && err.contains("64 candidates of 16384×16384")
                && err.contains("24.0 GB are available")
                && err.contains("14 candidates would fit"),
            "{err}"
        );
        let err = check_job_memory(&card, 2, picture, 1_000_000_000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("even one candidate does not fit"), "{err}");
    }
}
