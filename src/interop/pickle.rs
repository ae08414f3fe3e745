//! PyTorch's `torch.save` files, read without executing anything: the zip archive of
//! PyTorch 1.6 and later (`data.pkl` plus one entry per storage) and the legacy stream of
//! older versions (a pickle, then the storages one after the other).
//!
//! The pickle is run on a small machine that knows the opcodes `torch.save` writes and a
//! handful of constructors (`OrderedDict`, `torch._utils._rebuild_tensor_v2` and its
//! relatives); any other global becomes an opaque value and is never called. A tensor is
//! read through its storage offset, shape and strides, and a view that reaches past its
//! storage is an error naming the tensor: never zeros, never a crash.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::checkpoint::HostTensors;

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a readable PyTorch file: {why}")]
    Format { path: PathBuf, why: String },
    #[error("{path}: tensor `{name}`: {why}")]
    Tensor {
        path: PathBuf,
        name: String,
        why: String,
    },
}

/// The element types of PyTorch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
    F16,
    Bf16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    fn from_storage(class: &str) -> Option<Self> {
        Some(match class {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::Bf16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::Bf16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// Element `i` of `bytes` (little-endian, as `torch.save` writes) as f32.
    fn get(self, bytes: &[u8], i: usize) -> f32 {
        let b = &bytes[i * self.size()..(i + 1) * self.size()];
        match self {
            Self::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Self::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            Self::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            Self::Bf16 => f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
            Self::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            Self::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            Self::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
            Self::I8 => b[0] as i8 as f32,
            Self::U8 | Self::Bool => f32::from(b[0]),
        }
    }
}

/// IEEE half to single precision, exactly.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = (h >> 10) & 0x1F;
    let frac = u32::from(h & 0x3FF);
    let bits = match exp {
        // zero, or subnormal: frac * 2^-24, exact in f32
        0 => {
            let magnitude = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -magnitude } else { magnitude };
        }
        0x1F => sign | 0x7F80_0000 | (frac << 13),
        _ => sign | ((u32::from(exp) + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[derive(Debug, Clone, PartialEq)]
struct Storage {
    dtype: Dtype,
    key: String,
    /// elements, as the persistent id declares them
    numel: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    storage: Storage,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// A value of the pickle machine.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// the result of a constructor this reader does not run
    Opaque,
    Storage(Storage),
    Tensor(TensorRef),
}

/// Runs the pickle in `data` to its STOP; returns the value and where it ended.
fn unpickle(data: &[u8]) -> Result<(Value, usize), String> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let value = m.run()?;
    Ok((value, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("the pickle ends inside an operation at byte {}", self.pos))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL without its newline")?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn text(&mut self, n: usize) -> Result<Value, String> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .map(Value::Str)
            .map_err(|_| "a string that is not UTF-8".into())
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "the pickle's stack ran empty".into())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "the pickle's stack ran empty".into())
    }

    /// The values pushed since the last MARK.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self
            .marks
            .pop()
            .ok_or("an operation needs a MARK that is not there")?;
        if mark > self.stack.len() {
            return Err("a MARK above the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => drop(self.u8()?),  // PROTO
                0x95 => drop(self.u64()?), // FRAME
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(i64::from(v)))
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(i64::from(v)))
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        usize::from(self.u8()?)
                    } else {
                        self.u32()? as usize
                    };
                    let bytes = self.take(n)?;
                    if n > 8 {
                        // the legacy format's magic number; never a size or offset
                        self.stack.push(Value::Opaque);
                    } else {
                        let mut b = [if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                            0xFF
                        } else {
                            0
                        }; 8];
                        b[..n].copy_from_slice(bytes);
                        self.stack.push(Value::Int(i64::from_le_bytes(b)));
                    }
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let v = Value::Bytes(self.take(n)?.to_vec());
                    self.stack.push(v)
                }
                b'U' | b'C' => {
                    let n = usize::from(self.u8()?);
                    let v = Value::Bytes(self.take(n)?.to_vec());
                    self.stack.push(v)
                }
                0x8e => {
                    let n = self.u64()? as usize;
                    let v = Value::Bytes(self.take(n)?.to_vec());
                    self.stack.push(v)
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err("a TUPLE of more items than the stack holds".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let (name, module) = (self.pop()?, self.pop()?);
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err("a STACK_GLOBAL without its names".into()),
                    }
                }
                b'q' => {
                    let k = u32::from(self.u8()?);
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' {
                        u32::from(self.u8()?)
                    } else {
                        self.u32()?
                    };
                    let v = self.memo.get(&k).ok_or("a memo entry that was never put")?;
                    self.stack.push(v.clone())
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(items) = self.top()? {
                        items.push(v);
                    }
                }
                b'e' => {
                    let v = self.pop_mark()?;
                    if let Value::List(items) = self.top()? {
                        items.extend(v);
                    }
                }
                b's' => {
                    let (v, k) = (self.pop()?, self.pop()?);
                    if let Value::Dict(items) = self.top()? {
                        items.push((k, v));
                    }
                }
                b'u' => {
                    let flat = self.pop_mark()?;
                    if flat.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    if let Value::Dict(items) = self.top()? {
                        let mut it = flat.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            items.push((k, v));
                        }
                    }
                }
                b'R' => {
                    let (args, callable) = (self.pop()?, self.pop()?);
                    let v = reduce(callable, args)?;
                    self.stack.push(v)
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args), never run
                    self.pop()?;
                    self.pop()?;
                    self.stack.push(Value::Opaque)
                }
                b'b' => {
                    let state = self.pop()?;
                    // an OrderedDict's items may come as its state; other state is ignored
                    if let (Value::Dict(items), Value::Dict(more)) = (self.top()?, state) {
                        items.extend(more);
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent(pid)?)
                }
                b'0' => drop(self.pop()?),
                b'1' => drop(self.pop_mark()?),
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v)
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {at} is not one torch.save writes"
                    ));
                }
            }
        }
    }
}

/// `('storage', StorageClass, key, location, numel, ...)`: a tensor's storage.
fn persistent(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err("a persistent id that is not a tuple".into());
    };
    match items.as_slice() {
        [
            Value::Str(kind),
            Value::Global(_, class),
            Value::Str(key),
            _,
            Value::Int(n),
            ..,
        ] if kind == "storage" => {
            let dtype = Dtype::from_storage(class)
                .ok_or_else(|| format!("storage type {class} is not supported"))?;
            Ok(Value::Storage(Storage {
                dtype,
                key: key.clone(),
                numel: usize::try_from(*n).map_err(|_| format!("storage {key}: size {n}"))?,
            }))
        }
        _ => Err("a persistent id that is not a storage".into()),
    }
}

fn sizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => usize::try_from(*n).map_err(|_| format!("a negative {what}: {n}")),
                _ => Err(format!("a {what} that is not a number")),
            })
            .collect(),
        _ => Err(format!("a {what} that is not a tuple")),
    }
}

/// What a constructor call makes: the ones of tensors and dicts, opaque otherwise.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Opaque);
    };
    let args = match args {
        Value::Tuple(a) => a,
        _ => return Ok(Value::Opaque),
    };
    Ok(match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Value::Dict(Vec::new()),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let (storage, offset, size, stride) = match args.as_slice() {
                [s, o, z, t, ..] => (s, o, z, t),
                _ => return Err(format!("{name} with {} arguments", args.len())),
            };
            let Value::Storage(storage) = storage else {
                return Err(format!("{name} of something that is not a storage"));
            };
            let Value::Int(offset) = offset else {
                return Err(format!("{name} with an offset that is not a number"));
            };
            Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: usize::try_from(*offset).map_err(|_| format!("offset {offset}"))?,
                shape: sizes(size, "size")?,
                stride: sizes(stride, "stride")?,
            })
        }
        // a Parameter around its tensor
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            args.into_iter().next().unwrap_or(Value::Opaque)
        }
        // a tensor subclass: the inner call builds the tensor
        ("torch._tensor", "_rebuild_from_type_v2") => match args.as_slice() {
            [func, _, Value::Tuple(inner), ..] => {
                reduce(func.clone(), Value::Tuple(inner.clone()))?
            }
            _ => Value::Opaque,
        },
        _ => Value::Opaque,
    })
}

/// Every tensor under `value`, by its dotted path of dict keys (`student.module.norm.bias`).
fn collect(value: &Value, prefix: &str, out: &mut BTreeMap<String, TensorRef>) {
    match value {
        Value::Tensor(t) => {
            out.insert(prefix.to_string(), t.clone());
        }
        Value::Dict(items) => {
            for (k, v) in items {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                collect(v, &name, out);
            }
        }
        _ => {}
    }
}

/// The storages' bytes, by key.
type Storages = HashMap<String, Vec<u8>>;

/// Reads every tensor of a `torch.save` file as f32, by dotted name.
pub fn read(path: &Path) -> Result<HostTensors, PickleError> {
    let io = |err| PickleError::Io {
        path: path.to_path_buf(),
        err,
    };
    let format = |why: String| PickleError::Format {
        path: path.to_path_buf(),
        why,
    };
    let data = std::fs::read(path).map_err(io)?;
    let (root, storages) = if data.starts_with(b"PK") {
        read_zip(&data).map_err(format)?
    } else if data.first() == Some(&0x80) {
        read_legacy(&data).map_err(format)?
    } else {
        return Err(format("neither a zip archive nor a pickle".into()));
    };
    let mut refs = BTreeMap::new();
    collect(&root, "", &mut refs);
    let mut out = HostTensors::new();
    for (name, t) in refs {
        let values = gather(&t, &storages).map_err(|why| PickleError::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            why,
        })?;
        out.insert(name, (t.shape.clone(), values));
    }
    Ok(out)
}

/// The view's elements in row-major order, read through its offset and strides.
fn gather(t: &TensorRef, storages: &Storages) -> Result<Vec<f32>, String> {
    let s = &t.storage;
    let bytes = storages
        .get(&s.key)
        .ok_or_else(|| format!("its storage {} is not in the file", s.key))?;
    let held = bytes.len() / s.dtype.size();
    if held < s.numel {
        return Err(format!(
            "storage {} holds {held} elements, it declares {}",
            s.key, s.numel
        ));
    }
    if t.shape.len() != t.stride.len() {
        return Err(format!(
            "shape {:?} and strides {:?} differ in length",
            t.shape, t.stride
        ));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", t.shape))?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // the furthest element the view reads
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &st)| {
            acc.checked_add((d - 1).checked_mul(st)?)
        });
    match last {
        Some(last) if last < s.numel => {}
        _ => {
            return Err(format!(
                "its view (offset {}, shape {:?}, strides {:?}) reaches past its storage of {} \
                 elements",
                t.offset, t.shape, t.stride, s.numel
            ));
        }
    }
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, st)| i * st)
                .sum::<usize>();
        out.push(s.dtype.get(bytes, at));
        // the next row-major index
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

/// PyTorch 1.6+: `ARCHIVE/data.pkl` and `ARCHIVE/data/KEY` (stored, uncompressed).
fn read_zip(data: &[u8]) -> Result<(Value, Storages), String> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(|e| format!("zip: {e}"))?;
    let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .ok_or("no data.pkl in the archive")?
        .clone();
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let entry = |archive: &mut zip::ZipArchive<_>, name: &str| -> Result<Vec<u8>, String> {
        let mut file = archive.by_name(name).map_err(|e| format!("{name}: {e}"))?;
        let mut bytes = Vec::with_capacity(file.size() as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(bytes)
    };
    let (root, _) = unpickle(&entry(&mut archive, &pkl)?)?;
    let data_dir = format!("{prefix}data/");
    let mut storages = Storages::new();
    for name in names.iter().filter(|n| n.starts_with(&data_dir)) {
        let key = name[data_dir.len()..].to_string();
        storages.insert(key, entry(&mut archive, name)?);
    }
    Ok((root, storages))
}

/// Before PyTorch 1.6: pickles of the magic number, the protocol and the system info, the
/// object, the storage keys; then each storage as its element count and its bytes.
fn read_legacy(data: &[u8]) -> Result<(Value, Storages), String> {
    let mut pos = 0;
    let mut next = || -> Result<Value, String> {
        let (v, used) = unpickle(&data[pos..])?;
        pos += used;
        Ok(v)
    };
    for _ in 0..3 {
        next()?; // magic number, protocol version, system info
    }
    let root = next()?;
    let keys = match next()? {
        Value::List(keys) => keys,
        _ => return Err("the storage key list is missing".into()),
    };
    let mut sizes = HashMap::new();
    let mut all = BTreeMap::new();
    collect(&root, "", &mut all);
    for t in all.values() {
        sizes.insert(t.storage.key.clone(), t.storage.dtype.size());
    }
    let mut storages = Storages::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err("a storage key that is not a string".into());
        };
        let count = data
            .get(pos..pos + 8)
            .ok_or("the file ends before a storage")?;
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes")) as usize;
        let bytes = count
            .checked_mul(*sizes.get(&key).unwrap_or(&1))
            .ok_or("a storage size overflows")?;
        let body = data
            .get(pos + 8..pos + 8 + bytes)
            .ok_or_else(|| format!("the file ends inside storage {key}"))?;
        storages.insert(key, body.to_vec());
        pos += 8 + bytes;
    }
    Ok((root, storages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0xC000), -2.0);
        assert_eq!(f16_to_f32(0x7BFF), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert!(f16_to_f32(0x7E00).is_nan());
        assert_eq!(f16_to_f32(0x7C00), f32::INFINITY);
    }

    fn storage(numel: usize) -> (Storage, Storages) {
        let values: Vec<u8> = (0..numel as u32)
            .flat_map(|v| (v as f32).to_le_bytes())
            .collect();
        let s = Storage {
            dtype: Dtype::F32,
            key: "0".into(),
            numel,
        };
        (s, [("0".to_string(), values)].into_iter().collect())
    }

    #[test]
    fn views_read_through_offset_and_strides() {
        let (s, storages) = storage(12);
        // a 3x4 matrix stored row-major, read transposed: 4x3 with strides (1, 4)
        let t = TensorRef {
            storage: s.clone(),
            offset: 0,
            shape: vec![4, 3],
            stride: vec![1, 4],
        };
        let values = gather(&t, &storages).unwrap();
        assert_eq!(values, [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        let row = TensorRef {
            storage: s.clone(),
            offset: 8,
            shape: vec![4],
            stride: vec![1],
        };
        assert_eq!(gather(&row, &storages).unwrap(), [8., 9., 10., 11.]);
        // past the end: an error, not zeros
        let past = TensorRef {
            storage: s,
            offset: 9,
            shape: vec![4],
            stride: vec![1],
        };
        let err = gather(&past, &storages).unwrap_err();
        assert!(
            err.contains("reaches past its storage of 12 elements"),
            "{err}"
        );
    }
}
