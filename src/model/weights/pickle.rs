//! A small Python-pickle virtual machine, just enough for PyTorch checkpoints.
//!
//! Hand-written because no maintained crate reads both PyTorch layouts: `serde-pickle` rejects the
//! persistent-id and `REDUCE` opcodes that `torch.save` relies on, and the crates that do handle
//! them only read the zip layout, while the real weights we ship against are the legacy (pre-zip)
//! layout. Unknown callables are kept as opaque `Call` values rather than rejected, so a checkpoint
//! that pickles extra Python objects beside its tensors still loads.

use std::collections::HashMap;

/// A decoded pickle value. Containers are plain values (not shared references): state dicts never
/// mutate a container after reading it back from the memo, so copy semantics are sufficient.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global {
        module: String,
        name: String,
    },
    /// `callable(*args)` for a callable we do not interpret.
    Call {
        callable: Box<Value>,
        args: Vec<Value>,
    },
    /// The result of `persistent_load(pid)`; PyTorch uses it for tensor storages.
    Persistent(Box<Value>),
}

impl Value {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("pickle data ends early (truncated file?)")]
    Eof,
    #[error("unsupported pickle opcode 0x{op:02x} at byte {pos}")]
    Opcode { op: u8, pos: usize },
    #[error("malformed pickle at byte {pos}: {what}")]
    Malformed { pos: usize, what: &'static str },
}

enum Slot {
    Mark,
    V(Value),
}

/// Unpickles one object from `data`, returning it and the number of bytes consumed (legacy
/// checkpoints are several pickles back to back).
pub fn unpickle(data: &[u8]) -> Result<(Value, usize), PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    let v = m.run()?;
    Ok((v, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Eof)?;
        let s = self.data.get(self.pos..end).ok_or(PickleError::Eof)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or(PickleError::Eof)?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.bad("non-UTF-8 text line"))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn bad(&self, what: &'static str) -> PickleError {
        PickleError::Malformed {
            pos: self.pos,
            what,
        }
    }
    fn push(&mut self, v: Value) {
        self.stack.push(Slot::V(v));
    }
    fn pop(&mut self) -> Result<Value, PickleError> {
        match self.stack.pop() {
            Some(Slot::V(v)) => Ok(v),
            _ => Err(self.bad("stack underflow")),
        }
    }
    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let pos = self.pos;
        match self.stack.last_mut() {
            Some(Slot::V(v)) => Ok(v),
            _ => Err(PickleError::Malformed {
                pos,
                what: "stack underflow",
            }),
        }
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Slot::Mark) => break,
                Some(Slot::V(v)) => items.push(v),
                None => return Err(self.bad("missing MARK")),
            }
        }
        items.reverse();
        Ok(items)
    }
    fn str_bytes(&self, b: &[u8]) -> Result<Value, PickleError> {
        String::from_utf8(b.to_vec())
            .map(Value::Str)
            .map_err(|_| self.bad("invalid UTF-8 string"))
    }
    fn memo_get(&self, k: u32) -> Result<Value, PickleError> {
        self.memo.get(&k).cloned().ok_or(PickleError::Malformed {
            pos: self.pos,
            what: "memo key not found",
        })
    }
    fn memo_put(&mut self, k: u32) -> Result<(), PickleError> {
        let v = match self.stack.last() {
            Some(Slot::V(v)) => v.clone(),
            _ => return Err(self.bad("PUT with empty stack")),
        };
        self.memo.insert(k, v);
        Ok(())
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO n
                }
                0x95 => {
                    self.take(8)?; // FRAME: length only, data follows inline
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Slot::Mark),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push(Value::Int(v))
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(Value::Int(v))
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push(Value::Int(v))
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(self.bad("integer wider than 64 bits"));
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(buf)))
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(l.trim().parse().map_err(|_| self.bad("bad INT"))?),
                    };
                    self.push(v)
                }
                b'L' => {
                    let l = self.line()?;
                    let v = l
                        .trim_end_matches('L')
                        .parse()
                        .map_err(|_| self.bad("bad LONG"))?;
                    self.push(Value::Int(v))
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l.trim().parse().map_err(|_| self.bad("bad FLOAT"))?;
                    self.push(Value::Float(v))
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => {
                            let b = self.take(8)?;
                            u64::from_le_bytes(b.try_into().map_err(|_| self.bad("len"))?) as usize
                        }
                    };
                    let b = self.take(n)?;
                    let v = self.str_bytes(b)?;
                    self.push(v)
                }
                b'T' | b'U' => {
                    // Python 2 str: PyTorch's legacy files store storage keys this way.
                    let n = if op == b'T' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let b = self.take(n)?;
                    let v = Value::Str(String::from_utf8_lossy(b).into_owned());
                    self.push(v)
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => {
                            let b = self.take(8)?;
                            u64::from_le_bytes(b.try_into().map_err(|_| self.bad("len"))?) as usize
                        }
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))
                }
                b'V' => {
                    let l = self.line()?.to_string();
                    self.push(Value::Str(l))
                }
                b'S' => {
                    let l = self.line()?;
                    let s = l.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.push(Value::Str(s))
                }
                b'}' => self.push(Value::Dict(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                0x8f => self.push(Value::List(Vec::new())), // EMPTY_SET, kept as a list
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = Value::Dict(pairs(items, self.pos)?);
                    self.push(v)
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items)) // FROZENSET
                }
                0x85 => {
                    let a = self.pop()?;
                    self.push(Value::Tuple(vec![a]))
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Value::Tuple(vec![a, b]))
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Value::Tuple(vec![a, b, c]))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.bad("APPEND to non-list")),
                    }
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.bad("APPENDS to non-list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(self.bad("SETITEM on non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pos = self.pos;
                    let new = pairs(items, pos)?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(new),
                        _ => return Err(self.bad("SETITEMS on non-dict")),
                    }
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.push(Value::Global { module, name })
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => {
                            self.push(Value::Global { module, name })
                        }
                        _ => return Err(self.bad("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = match args {
                        Value::Tuple(a) => a,
                        _ => return Err(self.bad("REDUCE args must be a tuple")),
                    };
                    self.push(reduce(callable, args))
                }
                b'b' => {
                    // BUILD sets object state (e.g. an OrderedDict's `_metadata`); tensors do not need it.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::Persistent(Box::new(pid)))
                }
                b'P' => {
                    let l = self.line()?.to_string();
                    self.push(Value::Persistent(Box::new(Value::Str(l))))
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                b'p' => {
                    let k = self
                        .line()?
                        .trim()
                        .parse()
                        .map_err(|_| self.bad("bad PUT"))?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    let v = self.memo_get(k)?;
                    self.push(v)
                }
                b'j' => {
                    let k = self.u32()?;
                    let v = self.memo_get(k)?;
                    self.push(v)
                }
                b'g' => {
                    let k = self
                        .line()?
                        .trim()
                        .parse()
                        .map_err(|_| self.bad("bad GET"))?;
                    let v = self.memo_get(k)?;
                    self.push(v)
                }
                b'0' => {
                    self.stack.pop();
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)
                }
                _ => return Err(PickleError::Opcode { op, pos: at }),
            }
        }
    }
}

fn pairs(items: Vec<Value>, pos: usize) -> Result<Vec<(Value, Value)>, PickleError> {
    if !items.len().is_multiple_of(2) {
        return Err(PickleError::Malformed {
            pos,
            what: "odd number of dict items",
        });
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// Interprets the few callables a state dict uses; everything else stays an opaque `Call`.
fn reduce(callable: Value, args: Vec<Value>) -> Value {
    if let Value::Global { module, name } = &callable {
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                return match args.into_iter().next() {
                    Some(Value::List(items)) => Value::Dict(
                        items
                            .into_iter()
                            .filter_map(|kv| match kv {
                                Value::Tuple(mut p) | Value::List(mut p) if p.len() == 2 => {
                                    let v = p.pop()?;
                                    let k = p.pop()?;
                                    Some((k, v))
                                }
                                _ => None,
                            })
                            .collect(),
                    ),
                    _ => Value::Dict(Vec::new()),
                };
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => {
                // Parameter(data, requires_grad, hooks): the data tensor is all we need.
                if let Some(first) = args.into_iter().next() {
                    return first;
                }
                return Value::None;
            }
            _ => {}
        }
    }
    Value::Call {
        callable: Box::new(callable),
        args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_protocol2_dict_with_memo() {
        // pickle.dumps({'a': 1, 'b': [2.5, 'x']}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x04eu.";
        let (v, n) = unpickle(data).unwrap();
        assert_eq!(n, data.len());
        assert_eq!(
            v,
            Value::Dict(vec![
                (Value::Str("a".into()), Value::Int(1)),
                (
                    Value::Str("b".into()),
                    Value::List(vec![Value::Float(2.5), Value::Str("x".into())])
                ),
            ])
        );
    }

    #[test]
    fn long1_negative_and_truncation() {
        // pickle.dumps(-300, protocol=2) == b'\x80\x02\x8a\x02\xd4\xfe.'
        let (v, _) = unpickle(b"\x80\x02\x8a\x02\xd4\xfe.").unwrap();
        assert_eq!(v, Value::Int(-300));
        assert!(matches!(
            unpickle(b"\x80\x02X\x05\x00\x00\x00ab"),
            Err(PickleError::Eof)
        ));
        assert!(matches!(
            unpickle(b"\x80\x02\xff"),
            Err(PickleError::Opcode { op: 0xff, .. })
        ));
    }
}
