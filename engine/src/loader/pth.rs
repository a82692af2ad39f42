//! Lazy reader for PyTorch zip checkpoints as Lightning writes them (`torch.save` of a dict
//! whose `state_dict` maps names to tensors). Only the pickle's tensor table is parsed up
//! front; each tensor's bytes are read from the archive when asked for, one at a time, so a
//! multi-gigabyte release checkpoint never sits in memory whole. Everything else in the
//! pickle (optimizer state, callbacks, loops) is parsed as opaque objects and dropped.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// One opened checkpoint: the tensor table of its `state_dict` and an open archive.
pub struct Checkpoint {
    path: PathBuf,
    tensors: HashMap<String, TensorInfo>,
    /// Names in the state dict whose storage type Tessera does not read (e.g. int32 counters).
    skipped: Vec<String>,
    archive: Mutex<zip::ZipArchive<BufReader<File>>>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a checkpoint and reads its tensor table (no tensor data yet).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
            Error::bad_file(
                &path,
                format!(
                    "not a PyTorch zip checkpoint, or truncated ({e}); Tessera reads the format \
                     torch.save has written since PyTorch 1.6"
                ),
            )
        })?;
        let pkl_name = archive
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.into_owned()))
            .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
            .ok_or_else(|| {
                Error::bad_file(
                    &path,
                    "zip archive without data.pkl: not a PyTorch checkpoint",
                )
            })?;
        let dir = pkl_name.strip_suffix(".pkl").unwrap_or("data").to_owned();
        let object = {
            let entry = archive
                .by_name(&pkl_name)
                .map_err(|e| Error::bad_file(&path, format!("{pkl_name}: {e}")))?;
            // candle's pickle reader panics on some malformed input (e.g. a LONG1 longer than
            // 8 bytes overflows a shift); a damaged file is an error, not a crash.
            let parsed = crate::panic::catch(|| {
                let mut reader = BufReader::new(entry);
                let mut stack = Stack::empty();
                stack.read_loop(&mut reader)?;
                stack.finalize()
            });
            parsed
                .map_err(|_| "malformed pickle".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|reason| {
                    Error::bad_file(&path, format!("cannot parse {pkl_name}: {reason}"))
                })?
        };
        let call = foreign_call(&object);
        let state_dict = find_state_dict(object).ok_or_else(|| {
            let reason = match &call {
                Some(f) => format!(
                    "the checkpoint asks to call `{f}`, which is not part of a PyTorch state \
                     dict; Tessera never runs code from a checkpoint, and found no `state_dict` \
                     of tensors"
                ),
                None => "the checkpoint holds no `state_dict` of tensors".into(),
            };
            Error::bad_file(&path, reason)
        })?;
        let mut tensors = HashMap::new();
        let mut skipped = Vec::new();
        for (name, value) in state_dict {
            let Object::Unicode(key) = &name else {
                continue;
            };
            let key = key.clone();
            // candle panics on a tensor whose rebuild arguments are too few.
            let info = crate::panic::catch(|| value.into_tensor_info(name, Path::new(&dir)));
            match info {
                Ok(Ok(Some(info))) => {
                    tensors.insert(key, info);
                }
                Ok(Ok(None) | Err(_)) | Err(_) => skipped.push(key),
            }
        }
        if tensors.is_empty() {
            return Err(Error::bad_file(&path, "the state_dict holds no tensors"));
        }
        Ok(Self {
            path,
            tensors,
            skipped,
            archive: Mutex::new(archive),
        })
    }

    /// The file this checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the state dict holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// Names present in the state dict but stored in a type Tessera does not read.
    pub fn skipped_keys(&self) -> &[String] {
        &self.skipped
    }

    /// Shape and dtype of a tensor without reading it.
    pub fn info(&self, key: &str) -> Option<(&[usize], DType)> {
        self.tensors.get(key).map(|i| (i.layout.dims(), i.dtype))
    }

    /// Reads one tensor onto the CPU.
    pub fn get(&self, key: &str) -> Result<Tensor> {
        let info = self.tensors.get(key).ok_or_else(|| Error::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        })?;
        let bad = |reason: String| Error::bad_file(&self.path, format!("tensor `{key}`: {reason}"));
        let layout = &info.layout;
        let elem = info.dtype.size_in_bytes();
        let start = layout.start_offset();
        // Sizes come from the file: checked, so a malformed shape is an error, not an overflow.
        let count = layout
            .dims()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d));
        let end = count
            .and_then(|c| c.checked_mul(elem))
            .and_then(|b| b.checked_add(start));
        let (Some(count), Some(end)) = (count, end) else {
            return Err(bad(format!("shape {:?} is too large", layout.dims())));
        };
        if info
            .storage_size
            .checked_mul(elem)
            .is_none_or(|capacity| end > capacity)
        {
            return Err(bad("tensor extends past its storage".into()));
        }
        let fortran = layout.is_fortran_contiguous() && !layout.is_contiguous();
        if !layout.is_contiguous() && !fortran {
            return Err(bad(format!("unsupported strided layout {layout:?}")));
        }
        let mut archive = self
            .archive
            .lock()
            .map_err(|_| bad("archive lock poisoned".into()))?;
        let mut entry = archive
            .by_name(&info.path)
            .map_err(|e| bad(format!("storage `{}`: {e}", info.path)))?;
        if entry.size() < end as u64 {
            return Err(bad(format!(
                "storage `{}` holds {} bytes, the tensor needs {end}",
                info.path,
                entry.size(),
            )));
        }
        std::io::copy(&mut (&mut entry).take(start as u64), &mut std::io::sink())
            .map_err(|e| bad(e.to_string()))?;
        let mut bytes = vec![0u8; count * elem];
        entry
            .read_exact(&mut bytes)
            .map_err(|e| bad(format!("truncated data: {e}")))?;
        drop(entry);
        drop(archive);
        let dims = layout.dims();
        let tensor = if fortran && dims.len() > 1 {
            let rev: Vec<usize> = dims.iter().rev().copied().collect();
            let t = Tensor::from_raw_buffer(&bytes, info.dtype, &rev, &Device::Cpu)?;
            let perm: Vec<usize> = (0..dims.len()).rev().collect();
            t.permute(perm)?.contiguous()?
        } else {
            Tensor::from_raw_buffer(&bytes, info.dtype, dims, &Device::Cpu)?
        };
        Ok(tensor)
    }
}

/// The first callable in the pickle that a state dict never needs (`posix.system`, say):
/// the reader only parses the pickle, so such a call is named in the error, never made.
fn foreign_call(object: &Object) -> Option<String> {
    const KNOWN: [&str; 4] = ["torch", "collections", "numpy", "pytorch_lightning"];
    let mut todo = vec![object];
    // Bounded: a hostile pickle may nest deeply.
    let mut budget = 100_000usize;
    while let Some(o) = todo.pop() {
        budget = budget.checked_sub(1)?;
        match o {
            Object::Class {
                module_name,
                class_name,
            } if !KNOWN
                .iter()
                .any(|k| module_name == k || module_name.starts_with(&format!("{k}."))) =>
            {
                return Some(format!("{module_name}.{class_name}"));
            }
            Object::Tuple(v) | Object::List(v) => todo.extend(v.iter()),
            Object::Dict(entries) => todo.extend(entries.iter().flat_map(|(k, v)| [k, v])),
            Object::Reduce { callable, args } | Object::Build { callable, args } => {
                todo.push(callable);
                todo.push(args);
            }
            Object::PersistentLoad(o) => todo.push(o),
            _ => {}
        }
    }
    None
}

/// Finds the `state_dict` entry of a Lightning checkpoint; a bare state dict (a dict of
/// tensors, as `torch.save(model.state_dict())` writes) is accepted as well.
fn find_state_dict(object: Object) -> Option<Vec<(Object, Object)>> {
    let entries = as_dict(object)?;
    let is_bare = entries
        .iter()
        .any(|(_, v)| matches!(v, Object::Reduce { .. }));
    let mut bare = None;
    for (k, v) in entries {
        if k == Object::Unicode("state_dict".into()) {
            return as_dict(v);
        }
        if is_bare && bare.is_none() {
            bare = Some(Vec::new());
        }
        if let Some(b) = bare.as_mut() {
            b.push((k, v));
        }
    }
    bare
}

/// A dict, or an `OrderedDict` that the pickle rebuilds (possibly with a `_metadata` state).
fn as_dict(object: Object) -> Option<Vec<(Object, Object)>> {
    match object {
        Object::Dict(entries) => Some(entries),
        Object::Build { callable, .. } => as_dict(*callable),
        Object::Reduce { callable, args } => match *callable {
            Object::Class { class_name, .. } if class_name == "OrderedDict" => {
                as_dict(*args).or(Some(Vec::new()))
            }
            _ => None,
        },
        Object::Tuple(mut items) if items.len() == 1 => as_dict(items.remove(0)),
        _ => None,
    }
}
