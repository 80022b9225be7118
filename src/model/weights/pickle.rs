//! A small Python-pickle virtual machine, just enough for PyTorch checkpoints.
//!
//! Hand-written because no maintained crate reads both PyTorch layouts: `serde-pickle` rejects the
//! persistent-id and `REDUCE` opcodes that `torch.save` relies on, and the crates that do handle
//! them only read the zip layout, while the real weights we ship against are the legacy (pre-zip)
//! layout. Unknown callables are kept as opaque `Call` values rather than rejected, so a checkpoint
//! that pickles extra Python objects beside its tensors still loads.
//!
//! Nothing in a pickle is ever executed: `REDUCE` only records the call. On top of that, a pickle
//! that refers to anything able to run commands or code (`os.system`, `subprocess`, `builtins.eval`,
//! ... see [`forbidden`]) is refused outright, since a weights file never needs one and its
//! presence means the file is malicious. Hostile structure is bounded too: nesting depth is
//! limited ([`MAX_DEPTH`], so dropping a value cannot overflow the stack) and so is the total size
//! of the copies the memo and `DUP` make ([`unpickle`]'s budget), so a small file cannot expand
//! exponentially ("billion laughs").

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
    #[error(
        "refusing to load: the pickle refers to `{module}.{name}`, which can run commands or code; \
         a weights file never needs it, so the file is probably malicious (nothing was executed)"
    )]
    Forbidden { module: String, name: String },
}

/// Copy budget per input byte. torch.save's pickles use about 4 per byte of pickle (measured on
/// resnet50, efficientnet and mobilenet_v2 state dicts and a resnet50 checkpoint with Adam state,
/// zip and legacy), so 16 leaves a 4× margin.
pub const COPY_BUDGET_PER_BYTE: u64 = 16;
/// Copy budget every pickle gets, however small.
pub const COPY_BUDGET_MIN: u64 = 1 << 12;

/// Deepest nesting accepted (real checkpoints nest fewer than 10 levels). Dropping, cloning and
/// walking a value recurse, so this keeps a hostile file from overflowing the stack.
pub const MAX_DEPTH: u32 = 200;

/// Globals that run commands or code, load other code, or reach into the interpreter: the usual
/// payloads of a malicious pickle. Matched on the module's first component, plus the dangerous
/// names of `builtins`.
pub fn forbidden(module: &str, name: &str) -> bool {
    const MODULES: &[&str] = &[
        "os",
        "posix",
        "nt",
        "subprocess",
        "_posixsubprocess",
        "popen2",
        "commands",
        "pty",
        "sys",
        "shutil",
        "socket",
        "importlib",
        "runpy",
        "pickle",
        "_pickle",
        "cPickle",
        "marshal",
        "ctypes",
        "code",
        "codeop",
        "webbrowser",
        "multiprocessing",
        "signal",
        "pdb",
        "timeit",
        "asyncio",
        "threading",
        "_thread",
        "types",
        "operator",
        "_operator",
    ];
    const BUILTINS: &[&str] = &[
        "eval",
        "exec",
        "execfile",
        "compile",
        "__import__",
        "open",
        "file",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "locals",
        "vars",
        "input",
        "breakpoint",
        "apply",
        "reload",
        "exit",
        "quit",
        "help",
    ];
    let root = module.split('.').next().unwrap_or(module);
    MODULES.contains(&root)
        || (matches!(root, "builtins" | "__builtin__") && BUILTINS.contains(&name))
}

/// A value on the stack or in the memo, with its nesting depth and a size estimate (nodes plus
/// string bytes) that copies are charged against.
#[derive(Clone)]
struct Item {
    v: Value,
    depth: u32,
    weight: u64,
}

enum Slot {
    Mark,
    V(Item),
}

/// Unpickles one object from `data`, returning it and the number of bytes consumed (legacy
/// checkpoints are several pickles back to back).
///
/// Memo reads (`GET`), memo writes (`PUT`) and `DUP` copy values; their total size may not exceed
/// [`COPY_BUDGET_PER_BYTE`] units per input byte plus [`COPY_BUDGET_MIN`] (a unit is one value or
/// one string byte), so memory and time stay linear in the input however the memo is used.
pub fn unpickle(data: &[u8]) -> Result<(Value, usize), PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        budget: (data.len() as u64)
            .saturating_mul(COPY_BUDGET_PER_BYTE)
            .saturating_add(COPY_BUDGET_MIN),
    };
    let v = m.run()?;
    Ok((v, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Item>,
    /// What copies may still cost.
    budget: u64,
}

/// A scalar or string: depth 1.
fn leaf(v: Value) -> Item {
    let bytes = match &v {
        Value::Str(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::Global { module, name } => module.len() + name.len(),
        _ => 0,
    };
    Item {
        v,
        depth: 1,
        weight: 1 + bytes as u64,
    }
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
        self.stack.push(Slot::V(leaf(v)));
    }
    /// Pushes a container built from `children`, tracking depth and size.
    fn push_node(
        &mut self,
        children: Vec<Item>,
        make: impl FnOnce(Vec<Value>) -> Result<Value, PickleError>,
    ) -> Result<(), PickleError> {
        let depth = 1 + children.iter().map(|c| c.depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(self.bad("nested too deeply"));
        }
        let weight = children
            .iter()
            .fold(1u64, |w, c| w.saturating_add(c.weight));
        let v = make(children.into_iter().map(|c| c.v).collect())?;
        self.stack.push(Slot::V(Item { v, depth, weight }));
        Ok(())
    }
    fn pop_item(&mut self) -> Result<Item, PickleError> {
        match self.stack.pop() {
            Some(Slot::V(v)) => Ok(v),
            _ => Err(self.bad("stack underflow")),
        }
    }
    fn pop(&mut self) -> Result<Value, PickleError> {
        Ok(self.pop_item()?.v)
    }
    /// Adds `children` into the container on top of the stack (APPEND, SETITEM and friends).
    fn extend_top(
        &mut self,
        children: Vec<Item>,
        what: &'static str,
        add: impl FnOnce(&mut Value, Vec<Value>) -> bool,
    ) -> Result<(), PickleError> {
        let err = self.bad(what);
        let deep = self.bad("nested too deeply");
        let Some(Slot::V(top)) = self.stack.last_mut() else {
            return Err(self.bad("stack underflow"));
        };
        let depth = children
            .iter()
            .map(|c| c.depth + 1)
            .max()
            .unwrap_or(0)
            .max(top.depth);
        if depth > MAX_DEPTH {
            return Err(deep);
        }
        let weight = children
            .iter()
            .fold(top.weight, |w, c| w.saturating_add(c.weight));
        if !add(&mut top.v, children.into_iter().map(|c| c.v).collect()) {
            return Err(err);
        }
        top.depth = depth;
        top.weight = weight;
        Ok(())
    }
    /// Charges a copy of something of size `weight` against the budget, before it is made.
    fn charge(&mut self, weight: u64) -> Result<(), PickleError> {
        if weight > self.budget {
            return Err(self.bad("memo copies exceed the size limit (hostile file?)"));
        }
        self.budget -= weight;
        Ok(())
    }
    fn pop_mark(&mut self) -> Result<Vec<Item>, PickleError> {
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
    fn memo_get(&mut self, k: u32) -> Result<(), PickleError> {
        let Some(weight) = self.memo.get(&k).map(|i| i.weight) else {
            return Err(self.bad("memo key not found"));
        };
        self.charge(weight)?;
        if let Some(item) = self.memo.get(&k).cloned() {
            self.stack.push(Slot::V(item));
        }
        Ok(())
    }
    fn memo_put(&mut self, k: u32) -> Result<(), PickleError> {
        let Some(Slot::V(top)) = self.stack.last() else {
            return Err(self.bad("PUT with empty stack"));
        };
        self.charge(top.weight)?;
        if let Some(Slot::V(top)) = self.stack.last() {
            self.memo.insert(k, top.clone());
        }
        Ok(())
    }
    fn global(&mut self, module: String, name: String) -> Result<(), PickleError> {
        if forbidden(&module, &name) {
            return Err(PickleError::Forbidden { module, name });
        }
        self.push(Value::Global { module, name });
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
                    let pos = self.pos;
                    self.push_node(items, |v| Ok(Value::Dict(pairs(v, pos)?)))?
                }
                // LIST, and FROZENSET kept as a list
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.push_node(items, |v| Ok(Value::List(v)))?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_node(items, |v| Ok(Value::Tuple(v)))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.bad("stack underflow"));
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop_item()?);
                    }
                    items.reverse();
                    self.push_node(items, |v| Ok(Value::Tuple(v)))?
                }
                b'a' => {
                    let v = self.pop_item()?;
                    self.extend_top(vec![v], "APPEND to non-list", |top, v| match top {
                        Value::List(l) => {
                            l.extend(v);
                            true
                        }
                        _ => false,
                    })?
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, "APPENDS to non-list", |top, v| match top {
                        Value::List(l) => {
                            l.extend(v);
                            true
                        }
                        _ => false,
                    })?
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop_item()?;
                        let k = self.pop_item()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    let pos = self.pos;
                    let mut odd = false;
                    self.extend_top(items, "SETITEM(S) on non-dict", |top, v| match top {
                        Value::Dict(d) => match pairs(v, pos) {
                            Ok(p) => {
                                d.extend(p);
                                true
                            }
                            Err(_) => {
                                odd = true;
                                false
                            }
                        },
                        _ => false,
                    })
                    .map_err(|e| {
                        if odd {
                            self.bad("odd number of dict items")
                        } else {
                            e
                        }
                    })?
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.global(module, name)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => self.global(module, name)?,
                        _ => return Err(self.bad("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop_item()?;
                    let callable = self.pop_item()?;
                    if !matches!(args.v, Value::Tuple(_)) {
                        return Err(self.bad("REDUCE args must be a tuple"));
                    }
                    self.push_node(vec![callable, args], |mut v| {
                        let args = match v.pop() {
                            Some(Value::Tuple(a)) => a,
                            _ => Vec::new(), // checked above
                        };
                        let callable = v.pop().unwrap_or(Value::None);
                        Ok(reduce(callable, args))
                    })?
                }
                b'b' => {
                    // BUILD sets object state (e.g. an OrderedDict's `_metadata`); tensors do not need it.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop_item()?;
                    self.push_node(vec![pid], |mut v| {
                        Ok(Value::Persistent(Box::new(v.pop().unwrap_or(Value::None))))
                    })?
                }
                b'P' => {
                    let l = self.line()?.to_string();
                    let pid = leaf(Value::Str(l));
                    self.push_node(vec![pid], |mut v| {
                        Ok(Value::Persistent(Box::new(v.pop().unwrap_or(Value::None))))
                    })?
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
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b'g' => {
                    let k = self
                        .line()?
                        .trim()
                        .parse()
                        .map_err(|_| self.bad("bad GET"))?;
                    self.memo_get(k)?
                }
                b'0' => {
                    self.stack.pop();
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let Some(Slot::V(top)) = self.stack.last() else {
                        return Err(self.bad("stack underflow"));
                    };
                    self.charge(top.weight)?;
                    if let Some(Slot::V(top)) = self.stack.last() {
                        let item = top.clone();
                        self.stack.push(Slot::V(item))
                    }
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
