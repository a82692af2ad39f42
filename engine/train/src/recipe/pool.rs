//! The x_0 pool: a fixed set of training scenes encoded to token grids once, with their classes
//! and captions, which every stage trains on.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use tessera_engine::vqgan::Vqgan;
use tessera_engine::{Error, Result};

use super::{CAPTIONS_FILE, POOL_FILE, Recipe, TrainEvent};
use crate::data::{SceneGen, batch_to_tensor};

/// The x_0 pool: token grids of training scenes with their classes and captions.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Grids, `len × positions`.
    pub tokens: Vec<Vec<u32>>,
    /// Class of each scene.
    pub classes: Vec<usize>,
    /// Caption of each scene.
    pub captions: Vec<String>,
}

/// Encodes (or reads back) the pool of training scenes.
pub(super) fn pool(
    recipe: &Recipe,
    scenes: &SceneGen,
    vqgan: &Vqgan,
    work: &Path,
    events: &mut dyn FnMut(TrainEvent) -> bool,
) -> Result<Pool> {
    let path = work.join(POOL_FILE);
    let cap_path = work.join(CAPTIONS_FILE);
    let done = path.is_file() && cap_path.is_file();
    events(TrainEvent::Phase {
        name: "pool".into(),
        done,
    });
    let seed = pool_seed(recipe);
    if !done {
        let chunk = 64;
        let mut tokens: Vec<u32> = Vec::new();
        let mut classes = Vec::new();
        let mut captions = Vec::new();
        let mut positions = 0;
        let mut start = 0;
        while start < recipe.pool {
            let n = chunk.min(recipe.pool - start);
            let batch = scenes.scenes(seed, start as u64, n, recipe.res);
            let images: Vec<_> = batch.iter().map(|s| s.image.clone()).collect();
            let x = batch_to_tensor(&images, &Device::Cpu)?;
            let t = vqgan.encode_tokens(&x)?.flatten_from(1)?;
            positions = t.dim(1)?;
            tokens.extend(t.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?);
            for s in batch {
                classes.push(s.class as u32);
                captions.push(s.caption);
            }
            start += n;
            events(TrainEvent::Pool(start, recipe.pool));
        }
        let mut map = HashMap::new();
        map.insert(
            "tokens".to_string(),
            Tensor::from_vec(tokens, (recipe.pool, positions), &Device::Cpu)?,
        );
        map.insert(
            "classes".to_string(),
            Tensor::from_vec(classes, recipe.pool, &Device::Cpu)?,
        );
        let tmp = work.join("pool.safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp)
            .map_err(|e| Error::io(&tmp, std::io::Error::other(e)))?;
        let cap_tmp = work.join("captions.txt.tmp");
        std::fs::write(&cap_tmp, captions.join("\n")).map_err(|e| Error::io(&cap_tmp, e))?;
        std::fs::rename(&cap_tmp, &cap_path).map_err(|e| Error::io(&cap_path, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    }
    read_pool(&path, &cap_path)
}

pub(super) fn read_pool(path: &Path, cap_path: &Path) -> Result<Pool> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    let get = |k: &str| {
        map.get(k).cloned().ok_or_else(|| Error::MissingKey {
            path: path.to_path_buf(),
            key: k.into(),
        })
    };
    let tokens = get("tokens")?.to_vec2::<u32>()?;
    let classes = get("classes")?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|c| c as usize)
        .collect::<Vec<_>>();
    let text = std::fs::read_to_string(cap_path).map_err(|e| Error::io(cap_path, e))?;
    let captions: Vec<String> = text.lines().map(str::to_string).collect();
    if captions.len() != tokens.len() || classes.len() != tokens.len() || tokens.is_empty() {
        return Err(Error::bad_file(
            path,
            format!(
                "pool holds {} grids, {} classes and {} captions",
                tokens.len(),
                classes.len(),
                captions.len()
            ),
        ));
    }
    Ok(Pool {
        tokens,
        classes,
        captions,
    })
}

/// The seed of the pool's scene stream: scene `i` of the pool is scene `i` of this stream.
pub(super) fn pool_seed(recipe: &Recipe) -> u64 {
    recipe.seed ^ 0x504f_4f4c
}
