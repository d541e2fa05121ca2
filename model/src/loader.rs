//! Checkpoint loading: one `model.safetensors` or shards listed in `model.safetensors.index.json`,
//! memory-mapped; f32 / bf16 / f16 tensors converted to the compute dtype on load.
//! Every failure names the file and the tensor.

use crate::error::{invalid, io_err, Error, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// In-memory tensors ([`Checkpoint::from_tensors`]); `index` points into this when `files` is empty.
    mem: Vec<Tensor>,
    /// tensor name -> (index into `files` or `mem`, shape)
    index: HashMap<String, (usize, Vec<usize>)>,
    pub device: Device,
    pub dtype: DType,
    /// When set, tensors whose name it accepts are loaded as trainable [`Var`]s and recorded.
    trainable: Option<Box<dyn Fn(&str) -> bool>>,
    vars: RefCell<Vec<(String, Var)>>,
}

/// The weight files of a checkpoint folder, as [`Checkpoint::open`] reads them: the shards
/// `model.safetensors.index.json` names, else `model.safetensors`, else every `*.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: malformed JSON: {e}", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Invalid(format!("{}: missing key `weight_map` (an object)", index.display())))?;
        let mut names: Vec<String> = Vec::new();
        for (tensor, f) in map {
            let f = f.as_str().ok_or_else(|| {
                Error::Invalid(format!("{}: weight_map[{tensor}] is not a file name", index.display()))
            })?;
            if !names.iter().any(|n| n == f) {
                names.push(f.to_string());
            }
        }
        names.sort();
        names.into_iter().map(|n| dir.join(n)).collect()
    } else if single.exists() {
        vec![single]
    } else {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        found.sort();
        if found.is_empty() {
            return invalid(format!(
                "{}: no model.safetensors, model.safetensors.index.json or *.safetensors file",
                dir.display()
            ));
        }
        found
    };
    Ok(files)
}

impl Checkpoint {
    /// Opens the safetensors of a checkpoint folder ([`weight_files`]).
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let files = weight_files(dir)?;
        Self::open_files(dir, &files, device, dtype)
    }

    pub fn open_files(dir: &Path, paths: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for p in paths {
            if !p.exists() {
                return invalid(format!("checkpoint shard {} does not exist", p.display()));
            }
            // SAFETY: the file is mapped read-only; as with every mmap-based loader, it must not be
            // truncated by another process while the model is alive.
            let st = unsafe { MmapedSafetensors::new(p) }.map_err(|e| {
                let lfs = std::fs::File::open(p).ok().and_then(|f| {
                    use std::io::Read;
                    let mut head = Vec::new();
                    f.take(40).read_to_end(&mut head).ok()?;
                    Some(head.starts_with(b"version https://git-lfs"))
                });
                match lfs {
                    Some(true) => Error::Invalid(format!(
                        "{}: a Git LFS pointer, not the weights (fetch them: git lfs pull)",
                        p.display()
                    )),
                    _ => Error::Invalid(format!("{}: not a readable safetensors file: {e}", p.display())),
                }
            })?;
            let k = files.len();
            for (name, view) in st.tensors() {
                if let Some((other, _)) = index.insert(name.clone(), (k, view.shape().to_vec())) {
                    let other: &(PathBuf, MmapedSafetensors) = &files[other];
                    return invalid(format!(
                        "tensor {name} is stored twice: in {} and in {}",
                        other.0.display(),
                        p.display()
                    ));
                }
            }
            files.push((p.clone(), st));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            mem: Vec::new(),
            index,
            device: device.clone(),
            dtype,
            trainable: None,
            vars: RefCell::new(Vec::new()),
        })
    }

    /// Load the tensors `pred` accepts as trainable variables (see [`Checkpoint::take_vars`]).
    pub fn set_trainable(&mut self, pred: Box<dyn Fn(&str) -> bool>) {
        self.trainable = Some(pred);
    }

    /// The trainable variables created so far, with their tensor names, in load order.
    pub fn take_vars(&self) -> Vec<(String, Var)> {
        std::mem::take(&mut *self.vars.borrow_mut())
    }

    /// All stored tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.names_with_prefix("")
    }

    /// A tensor in its stored dtype (for writing checkpoints back).
    pub fn get_stored(&self, name: &str) -> Result<Tensor> {
        let Some((k, _)) = self.index.get(name) else {
            return invalid(format!("tensor {name} is missing from the checkpoint in {}", self.dir.display()));
        };
        if self.files.is_empty() {
            return Ok(self.mem[*k].clone());
        }
        let (path, st) = &self.files[*k];
        st.load(name, &self.device)
            .map_err(|e| Error::Invalid(format!("{}: cannot read tensor {name}: {e}", path.display())))
    }

    /// An in-memory checkpoint (e.g. random weights for benchmarks); `get` converts to `dtype`.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, device: &Device, dtype: DType) -> Result<Self> {
        let mut index = HashMap::new();
        let mut mem = Vec::new();
        for (i, (name, t)) in tensors.into_iter().enumerate() {
            index.insert(name.clone(), (i, t.dims().to_vec()));
            mem.push(t);
        }
        Ok(Self {
            dir: PathBuf::from("<memory>"),
            files: Vec::new(),
            mem,
            index,
            device: device.clone(),
            dtype,
            trainable: None,
            vars: RefCell::new(Vec::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|(_, s)| s.as_slice())
    }

    /// Names of stored tensors that start with `prefix`, sorted.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().filter(|k| k.starts_with(prefix)).map(|s| s.as_str()).collect();
        v.sort();
        v
    }

    /// Loads a tensor, checking its shape, converted to the compute dtype on the device.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_unchecked(name)?;
        if t.dims() != shape {
            let file = self.files.get(self.index[name].0).map(|f| f.0.as_path()).unwrap_or(self.dir.as_path());
            return invalid(format!(
                "tensor {name} in {} has shape {:?}, expected {:?}",
                file.display(),
                t.dims(),
                shape
            ));
        }
        Ok(t)
    }

    /// Loads a tensor of any shape.
    pub fn get_unchecked(&self, name: &str) -> Result<Tensor> {
        let Some((k, _)) = self.index.get(name) else {
            return invalid(format!("tensor {name} is missing from the checkpoint in {}", self.dir.display()));
        };
        if self.files.is_empty() {
            let t = self.mem[*k].to_device(&self.device)?.to_dtype(self.dtype)?;
            return Ok(t);
        }
        let (path, st) = &self.files[*k];
        let t = st
            .load(name, &self.device)
            .map_err(|e| Error::Invalid(format!("{}: cannot read tensor {name}: {e}", path.display())))?;
        match t.dtype() {
            DType::F32 | DType::BF16 | DType::F16 => {}
            other => {
                return invalid(format!(
                    "tensor {name} in {} has dtype {other:?}; only f32, bf16 and f16 weights are supported",
                    path.display()
                ))
            }
        }
        let t = t.to_dtype(self.dtype)?;
        if self.trainable.as_ref().is_some_and(|f| f(name)) {
            let mut vars = self.vars.borrow_mut();
            if let Some((_, v)) = vars.iter().find(|(n, _)| n == name) {
                return Ok(v.as_tensor().clone());
            }
            let v = Var::from_tensor(&t)?;
            let out = v.as_tensor().clone();
            vars.push((name.to_string(), v));
            return Ok(out);
        }
        Ok(t)
    }

    pub fn scope(&self, prefix: &str) -> Scope<'_> {
        Scope { ck: self, prefix: prefix.to_string() }
    }

    /// Refuses a checkpoint holding an indexed sub-module `{prefix}{i}.` with `i >= n`, the
    /// number of layers its config declares: loading the first `n` would silently run a
    /// shallower model than the weights (a config edited or copied from another size).
    pub fn check_no_layer_beyond(&self, prefix: &str, n: usize, what: &str) -> Result<()> {
        let beyond = self.indices(prefix).filter(|&i| i >= n).max();
        match beyond {
            Some(i) => invalid(format!(
                "{what}: the checkpoint holds {} layers ({prefix}{i}.*) but its config declares \
                 num_hidden_layers = {n}: the config does not describe these weights",
                i + 1
            )),
            None => Ok(()),
        }
    }

    /// The indices `i` of the stored tensors named `{prefix}{i}.*` (once per tensor).
    fn indices<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.index.keys().filter_map(move |k| k.strip_prefix(prefix)?.split_once('.')?.0.parse::<usize>().ok())
    }

    /// Number of consecutive indexed sub-modules `{prefix}{i}.` present (e.g. layers).
    pub fn count_indexed(&self, prefix: &str) -> usize {
        let seen: BTreeSet<usize> = self.indices(prefix).collect();
        (0..).take_while(|i| seen.contains(i)).count()
    }
}

/// A name prefix inside a checkpoint.
#[derive(Clone)]
pub struct Scope<'a> {
    pub ck: &'a Checkpoint,
    pub prefix: String,
}

impl<'a> Scope<'a> {
    pub fn pp(&self, name: impl std::fmt::Display) -> Scope<'a> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Scope { ck: self.ck, prefix }
    }
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }
    pub fn get(&self, leaf: &str, shape: &[usize]) -> Result<Tensor> {
        self.ck.get(&self.name(leaf), shape)
    }
    pub fn has(&self, leaf: &str) -> bool {
        self.ck.has(&self.name(leaf))
    }
    pub fn shape(&self, leaf: &str) -> Option<&'a [usize]> {
        self.ck.shape(&self.name(leaf))
    }
}

/// A fingerprint of a model folder's weights (the files [`weight_files`] names, not e.g. a
/// checkpoint's `optimizer.safetensors`, which loading does not read): each file's name and
/// size and an FNV-1a hash of 256 blocks of 4 KiB spread evenly over it, so at most 1 MiB is read
/// per file whatever its size. What an evaluation stores beside the folder's path, so that a folder
/// rewritten with other weights (a model bundled anew at the same place) is not taken for the one
/// that wrote the stored answers: training moves weights all through the file, so two checkpoints
/// of one run differ in it.
pub fn weights_fingerprint(dir: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    const BLOCKS: u64 = 256;
    const BLOCK: u64 = 4096;
    let files = weight_files(dir)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let mut buf = vec![0u8; BLOCK as usize];
    for f in &files {
        let mut file = std::fs::File::open(f).map_err(io_err(f))?;
        let len = file.metadata().map_err(io_err(f))?.len();
        eat(f.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        eat(&len.to_le_bytes());
        for k in 0..BLOCKS {
            let at = (len.saturating_sub(BLOCK)) * k / (BLOCKS - 1);
            file.seek(SeekFrom::Start(at)).map_err(io_err(f))?;
            let n = (len - at).min(BLOCK) as usize;
            file.read_exact(&mut buf[..n]).map_err(io_err(f))?;
            eat(&buf[..n]);
        }
    }
    Ok(format!("{h:016x}"))
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    /// The same bytes give the same fingerprint; a changed weight anywhere a block reads, a
    /// renamed or resized file change it; a folder without weights is an error.
    #[test]
    fn weights_fingerprint_follows_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("model.safetensors");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        std::fs::write(&f, &bytes).unwrap();
        let a = weights_fingerprint(dir.path()).unwrap();
        assert_eq!(a, weights_fingerprint(dir.path()).unwrap());
        let mut changed = bytes.clone();
        changed[bytes.len() - 1] ^= 1; // the last block is always read
        std::fs::write(&f, &changed).unwrap();
        assert_ne!(a, weights_fingerprint(dir.path()).unwrap());
        std::fs::write(&f, &bytes[..bytes.len() - 1]).unwrap();
        assert_ne!(a, weights_fingerprint(dir.path()).unwrap());
        std::fs::write(&f, &bytes).unwrap();
        // files loading does not read (a checkpoint's optimizer state) do not count
        std::fs::write(dir.path().join("optimizer.safetensors"), b"state").unwrap();
        assert_eq!(a, weights_fingerprint(dir.path()).unwrap());
        std::fs::remove_file(dir.path().join("optimizer.safetensors")).unwrap();
        std::fs::rename(&f, dir.path().join("other.safetensors")).unwrap();
        assert_ne!(a, weights_fingerprint(dir.path()).unwrap());
        std::fs::write(dir.path().join("tiny.safetensors"), b"ab").unwrap(); // shorter than a block
        weights_fingerprint(dir.path()).unwrap();
        let empty = tempfile::tempdir().unwrap();
        assert!(weights_fingerprint(empty.path()).unwrap_err().to_string().contains("no model.safetensors"));
    }
}
