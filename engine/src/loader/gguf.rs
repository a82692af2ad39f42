//! Quantized stage weights in GGUF, the container llama.cpp and candle read and write: one
//! `stage{t}.gguf` per level holds every tensor of the stage under its parameter name, the
//! linear layers' weights in a ggml block format (`q8_0`, `q4k`; see
//! [`crate::nn::Linear::block_format`]) and everything else (embeddings, LayerNorms, biases)
//! in f32. The blocks are loaded as they are stored: nothing is dequantized and quantized
//! again, so a stage runs exactly the weights `tessera import` wrote.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Value of `general.architecture` in the files Tessera writes.
pub const ARCHITECTURE: &str = "tessera-imagebart-stage";

/// An opened GGUF weights file: its tensor table (data is read tensor by tensor).
#[derive(Debug)]
pub struct GgufWeights {
    path: PathBuf,
    content: Content,
}

/// Whether a ggml type is a block format (not plain f32/f16/bf16).
pub fn is_block_format(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// `q8_0`, `q4k`, …: the name Tessera's cards and command line use for a block format.
pub fn format_name(dtype: GgmlDType) -> String {
    match dtype {
        GgmlDType::Q8_0 => "q8_0".into(),
        GgmlDType::Q4K => "q4k".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl GgufWeights {
    /// Reads the tensor table of the file at `path`: [`Error::Io`] when it is missing,
    /// [`Error::BadFile`] when it is not a readable GGUF file (truncated, something else).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let content = Content::read(&mut BufReader::new(file))
            .map_err(|e| Error::bad_file(&path, format!("not a readable GGUF file: {e}")))?;
        Ok(Self { path, content })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shape of the tensor `key` (PyTorch order), if the file holds it.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.content
            .tensor_infos
            .get(key)
            .map(|i| i.shape.dims().to_vec())
    }

    /// Storage type of the tensor `key`, if the file holds it.
    pub fn dtype(&self, key: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(key).map(|i| i.ggml_dtype)
    }

    /// Whether `key` is stored in a block format.
    pub fn is_quantized(&self, key: &str) -> bool {
        self.dtype(key).is_some_and(is_block_format)
    }

    /// Names of the tensors stored in a block format, sorted.
    pub fn quantized_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .content
            .tensor_infos
            .iter()
            .filter(|(_, i)| is_block_format(i.ggml_dtype))
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// The tensor `key` as stored, on `device`.
    pub fn read(&self, key: &str, device: &Device) -> Result<QTensor> {
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        self.content
            .tensor(&mut BufReader::new(file), key, device)
            .map_err(|e| Error::bad_file(&self.path, format!("tensor `{key}`: {e}")))
    }

    /// The tensor `key` as an f32 tensor on the CPU (for f32/f16/bf16 entries).
    pub fn read_dense(&self, key: &str) -> Result<Tensor> {
        self.read(key, &Device::Cpu)?
            .dequantize(&Device::Cpu)
            .map_err(|e| Error::bad_file(&self.path, format!("tensor `{key}`: {e}")))
    }
}

/// Writes `tensors` (name, stored form) to a new GGUF file at `path`, with `level` and the
/// block format `quantization` in its metadata.
pub fn write(
    path: &Path,
    level: usize,
    quantization: GgmlDType,
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::new(file);
    let arch = Value::String(ARCHITECTURE.into());
    let level = Value::U32(level as u32);
    let format = Value::String(format_name(quantization));
    let metadata = [
        ("general.architecture", &arch),
        ("tessera.level", &level),
        ("tessera.quantization", &format),
    ];
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut w, &metadata, &refs)
        .map_err(|e| Error::bad_file(path, format!("cannot write: {e}")))?;
    w.flush().map_err(|e| Error::io(path, e))?;
    w.into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io(path, e))
}
