//! A `VarBuilder` backend that checks every tensor a network asks for against the file
//! holding it, so that a wrong or truncated weights file fails with the file, the key and both
//! shapes named ([`Error::ShapeMismatch`], [`Error::MissingKey`]) instead of a bare shape error.
//! It can also record what was loaded, which is how `tessera import` learns exactly the tensors
//! a network needs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use super::pth::Checkpoint;
use crate::Error;

/// Where the tensors come from.
pub enum Source {
    /// A Lightning checkpoint; `map` turns a network parameter name into the checkpoint key.
    Pth {
        /// The checkpoint.
        ckpt: Arc<Checkpoint>,
        /// Name → key mapping.
        map: fn(&str) -> String,
    },
    /// A memory-mapped safetensors file, keys equal to parameter names.
    Safetensors {
        /// The mapped file.
        st: Arc<candle_core::safetensors::MmapedSafetensors>,
        /// Its path, for messages.
        path: PathBuf,
    },
    /// A GGUF file, keys equal to parameter names. A weight stored in a block format is handed
    /// to the network as a placeholder of its shape that holds no data
    /// ([`crate::nn::Linear::placeholder`]); the loader then swaps the stored blocks into the
    /// linear layers ([`crate::nn::Linear::with_stored_quant`]).
    Gguf(Arc<super::gguf::GgufWeights>),
}

impl Source {
    /// Maps the safetensors file at `path`: [`Error::Io`] when it is missing, [`Error::BadFile`]
    /// when it is not a readable safetensors file (truncated, something else).
    pub fn safetensors(path: PathBuf) -> crate::Result<Self> {
        if !path.is_file() {
            return Err(Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "weights file missing"),
            ));
        }
        // SAFETY: the file is mapped read-only; Tessera never writes a weights file in place
        // (imports and exports go to a fresh file or folder that is renamed), so the mapping
        // is not mutated.
        #[allow(unsafe_code)]
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }
            .map_err(|e| Error::bad_file(&path, format!("not a readable safetensors file: {e}")))?;
        Ok(Source::Safetensors {
            st: Arc::new(st),
            path,
        })
    }
}

/// Tensors recorded while a network was built: (parameter name, tensor as loaded).
pub type Recorder = Arc<Mutex<Vec<(String, Tensor)>>>;

/// The checking backend.
pub struct Checked {
    source: Source,
    record: Option<Recorder>,
}

impl Checked {
    /// A backend over `source`, recording loaded tensors into `record` if given.
    pub fn new(source: Source, record: Option<Recorder>) -> Self {
        Self { source, record }
    }

    /// The GGUF file behind this backend, if it reads one.
    pub fn gguf(&self) -> Option<Arc<super::gguf::GgufWeights>> {
        match &self.source {
            Source::Gguf(w) => Some(w.clone()),
            _ => None,
        }
    }

    fn path(&self) -> PathBuf {
        match &self.source {
            Source::Pth { ckpt, .. } => ckpt.path().to_path_buf(),
            Source::Safetensors { path, .. } => path.clone(),
            Source::Gguf(w) => w.path().to_path_buf(),
        }
    }

    fn key(&self, name: &str) -> String {
        match &self.source {
            Source::Pth { map, .. } => map(name),
            Source::Safetensors { .. } | Source::Gguf(_) => name.to_owned(),
        }
    }

    fn stored_shape(&self, key: &str) -> Option<Vec<usize>> {
        match &self.source {
            Source::Pth { ckpt, .. } => ckpt.info(key).map(|(s, _)| s.to_vec()),
            Source::Safetensors { st, .. } => st.get(key).ok().map(|v| v.shape().to_vec()),
            Source::Gguf(w) => w.shape(key),
        }
    }

    fn load(&self, key: &str) -> crate::Result<Tensor> {
        match &self.source {
            Source::Pth { ckpt, .. } => ckpt.get(key),
            Source::Safetensors { st, path } => st
                .load(key, &Device::Cpu)
                .map_err(|e| Error::bad_file(path, format!("tensor `{key}`: {e}"))),
            Source::Gguf(w) if w.is_quantized(key) => {
                let shape = w.shape(key).unwrap_or_default();
                Ok(crate::nn::Linear::placeholder(shape, &Device::Cpu)?)
            }
            Source::Gguf(w) => w.read_dense(key),
        }
    }
}

/// Wraps a typed engine error so it survives the trip through candle's `Result`.
pub fn wrap(err: Error) -> candle_core::Error {
    candle_core::Error::WrappedContext {
        wrapped: Box::new(err),
        context: String::new(),
    }
}

/// Recovers a typed engine error wrapped by [`wrap`], looking through candle's context layers.
pub fn unwrap(err: candle_core::Error) -> Error {
    match err {
        candle_core::Error::WrappedContext { wrapped, context } => {
            match wrapped.downcast::<Error>() {
                Ok(e) => *e,
                Err(other) => Error::Candle(candle_core::Error::WrappedContext {
                    wrapped: other,
                    context,
                }),
            }
        }
        candle_core::Error::WithBacktrace { inner, .. } => unwrap(*inner),
        candle_core::Error::Context { inner, context } => match unwrap(*inner) {
            Error::Candle(c) => Error::Candle(c.context(context.to_string())),
            typed => typed,
        },
        other => Error::Candle(other),
    }
}

impl SimpleBackend for Checked {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let key = self.key(name);
        let Some(found) = self.stored_shape(&key) else {
            return Err(wrap(Error::MissingKey {
                path: self.path(),
                key,
            }));
        };
        if found != shape.dims() {
            return Err(wrap(Error::ShapeMismatch {
                path: self.path(),
                key,
                expected: shape.dims().to_vec(),
                found,
            }));
        }
        let tensor = self.load(&key).map_err(wrap)?;
        let tensor = if tensor.dtype() == dtype {
            tensor
        } else {
            tensor.to_dtype(dtype)?
        };
        if let Some(Ok(mut rec)) = self.record.as_ref().map(|r| r.lock()) {
            rec.push((name.to_owned(), tensor.clone()));
        }
        tensor.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let key = self.key(name);
        let tensor = self.load(&key).map_err(wrap)?.to_dtype(dtype)?;
        if let Some(Ok(mut rec)) = self.record.as_ref().map(|r| r.lock()) {
            rec.push((name.to_owned(), tensor.clone()));
        }
        tensor.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.stored_shape(&self.key(name)).is_some()
    }
}

/// Checkpoint key of a transformer parameter: the EMA copy, named by the module path with
/// every dot removed (`encoder.norm.weight` → `transformer_ema.encodernormweight`).
pub fn ema_key(name: &str) -> String {
    format!("transformer_ema.{}", name.replace('.', ""))
}

/// Checkpoint key of a VQGAN parameter inside an ImageBART stage checkpoint.
pub fn first_stage_key(name: &str) -> String {
    format!("first_stage_model.{name}")
}
