//! Structure of the real releases: for every official config, the networks Tessera builds ask
//! for exactly the parameters (names and shapes) of the released state dicts, as listed by
//! instantiating the official modules (`shared/reference/keys`). No weights are needed: the
//! backend below hands out broadcast zeros and records what was asked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use tessera_engine::loader::build_network;
use tessera_engine::loader::official::{count_params, read_stage_config};
use tessera_engine::schedule::Schedule;
use tessera_engine::vqgan::Vqgan;

type Asked = Arc<Mutex<BTreeMap<String, Vec<usize>>>>;

struct Recording(Asked);

impl SimpleBackend for Recording {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap()
            .insert(name.to_owned(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unchecked get of {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference")
}

fn read_keys(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, rest) = l.split_once(' ').unwrap();
            let dims = rest[rest.find('[').unwrap() + 1..rest.find(']').unwrap()]
                .split(',')
                .filter(|d| !d.trim().is_empty())
                .map(|d| d.trim().parse().unwrap())
                .collect();
            (name.to_owned(), dims)
        })
        .collect()
}

#[test]
fn stage_networks_match_release_state_dicts() {
    let mut checked = 0;
    for entry in std::fs::read_dir(reference().join("keys")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(rel) = file
            .strip_prefix("sd_")
            .and_then(|f| f.strip_suffix(".txt"))
        else {
            continue;
        };
        if rel.contains("joint-training") {
            continue; // one module holding all scales; no weights were released
        }
        let config = reference().join("configs").join(rel.replace("__", "/"));
        let stage = read_stage_config(&config).unwrap_or_else(|e| panic!("{e}"));
        let asked: Asked = Default::default();
        let vb =
            VarBuilder::from_backend(Box::new(Recording(asked.clone())), DType::F32, Device::Cpu);
        let schedule = Schedule::geometric(stage.levels);
        if let Err(e) = build_network(&stage.network, vb, &schedule.alphats) {
            panic!("{file}: {e}");
        }
        let asked = asked.lock().unwrap().clone();
        let released: BTreeMap<String, Vec<usize>> = read_keys(&path)
            .into_iter()
            // Recomputed, not loaded: the causal mask buffer; never used: the encoder's head.
            .filter(|(k, _)| !k.ends_with("attn.mask") && !k.starts_with("encoder.to_logits"))
            .collect();
        assert_eq!(asked, released, "{file}");
        // The parameter count shown by `tessera info` is the state dict's (masks excluded).
        let total: usize = read_keys(&path)
            .iter()
            .filter(|(k, _)| !k.ends_with("attn.mask"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(count_params(&stage.network), total, "{file}");
        checked += 1;
    }
    assert!(checked >= 20, "checked {checked} configs");
}

#[test]
fn vqgan_matches_release_state_dicts() {
    for (keys, config, used) in [
        (
            "vqgan_ffhq.txt",
            "ffhq/2_scales/ffhq-custom-scale1.yaml",
            548,
        ),
        (
            "vqgan_in.txt",
            "imagenet/5_scales/imagenet-custom-scale1.yaml",
            973,
        ),
    ] {
        let stage = read_stage_config(&reference().join("configs").join(config)).unwrap();
        let asked: Asked = Default::default();
        let vb =
            VarBuilder::from_backend(Box::new(Recording(asked.clone())), DType::F32, Device::Cpu);
        if let Err(e) = Vqgan::new(vb, &stage.vqgan, used) {
            panic!("{config}: {e}");
        }
        let mut asked = asked.lock().unwrap().clone();
        assert_eq!(asked.remove("quantize.used"), Some(vec![used]), "{keys}");
        assert_eq!(
            asked,
            read_keys(&reference().join("keys").join(keys)),
            "{keys}"
        );
    }
}
