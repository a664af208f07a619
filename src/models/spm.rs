//! SentencePiece `tokenizer.model` read natively: a small protobuf wire parser for `ModelProto`
//! and sentencepiece's own BPE encoder and decoder (ported from the algorithm of
//! sentencepiece 0.2.0's `bpe_model.cc`, `normalizer.cc` and `sentencepiece_processor.cc`), so
//! ids equal `SentencePieceProcessor.encode` exactly, ties between equal scores included.
//!
//! Unigram, word and char models and normalisers with a precompiled charsmap (nmt_nfkc etc.)
//! are refused by name: InternLM2's model is BPE with the `identity` normaliser.

use crate::error::{Error, Result};
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

/// `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(v: u64) -> Option<Self> {
        Some(match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// One vocabulary entry; its id is its position.
#[derive(Debug, Clone)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The `TrainerSpec` fields encoding depends on (defaults as in sentencepiece_model.proto).
#[derive(Debug, Clone)]
pub struct TrainerSpec {
    /// 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    pub vocab_size: i64,
    pub byte_fallback: bool,
    pub treat_whitespace_as_suffix: bool,
    pub split_digits: bool,
    pub unk_piece: String,
    pub bos_piece: String,
    pub eos_piece: String,
    pub pad_piece: String,
    /// What `<unk>` decodes to; `None` = sentencepiece's default " ⁇ ".
    pub unk_surface: Option<String>,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        Self {
            model_type: 1,
            vocab_size: 8000,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            split_digits: false,
            unk_piece: String::new(),
            bos_piece: String::new(),
            eos_piece: String::new(),
            pad_piece: String::new(),
            unk_surface: None,
        }
    }
}

/// `NormalizerSpec` (defaults as in sentencepiece_model.proto).
#[derive(Debug, Clone)]
pub struct NormalizerSpec {
    pub name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub normalization_rule_tsv: String,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
            normalization_rule_tsv: String::new(),
        }
    }
}

/// The parsed `ModelProto` (fields perceptio reads; the others are skipped).
#[derive(Debug, Clone, Default)]
pub struct ModelProto {
    pub pieces: Vec<Piece>,
    pub trainer: TrainerSpec,
    pub normalizer: NormalizerSpec,
    pub denormalizer: Option<NormalizerSpec>,
}

// ---- protobuf wire format ----

struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at byte {}", self.pos));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "field of {n} bytes at byte {} runs past the end ({} bytes)",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next (field number, value), or `None` at the end.
    fn field(&mut self) -> std::result::Result<Option<(u64, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let (num, wt) = (key >> 3, key & 7);
        if num == 0 {
            return Err(format!("field number 0 at byte {at}"));
        }
        let v = match wt {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| format!("length {n} at byte {at} is too large"))?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            _ => return Err(format!("unsupported wire type {wt} (field {num}) at byte {at}")),
        };
        Ok(Some((num, v)))
    }
}

fn want_varint(v: Value, what: &str) -> std::result::Result<u64, String> {
    match v {
        Value::Varint(x) => Ok(x),
        _ => Err(format!("{what}: expected a varint")),
    }
}

fn want_bytes<'a>(v: Value<'a>, what: &str) -> std::result::Result<&'a [u8], String> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(format!("{what}: expected a length-delimited field")),
    }
}

fn want_string(v: Value, what: &str) -> std::result::Result<String, String> {
    String::from_utf8(want_bytes(v, what)?.to_vec()).map_err(|_| format!("{what}: not UTF-8"))
}

fn want_f32(v: Value, what: &str) -> std::result::Result<f32, String> {
    match v {
        Value::Fixed32(x) => Ok(f32::from_bits(x)),
        _ => Err(format!("{what}: expected a 32-bit float")),
    }
}

fn parse_piece(buf: &[u8], i: usize) -> std::result::Result<Piece, String> {
    let mut w = Wire::new(buf);
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    while let Some((num, v)) = w.field().map_err(|e| format!("pieces[{i}]: {e}"))? {
        match num {
            1 => p.piece = want_string(v, &format!("pieces[{i}].piece"))?,
            2 => p.score = want_f32(v, &format!("pieces[{i}].score"))?,
            3 => {
                let t = want_varint(v, &format!("pieces[{i}].type"))?;
                p.kind = PieceType::from_proto(t).ok_or_else(|| format!("pieces[{i}].type {t} is not a piece type"))?;
            }
            _ => {}
        }
    }
    Ok(p)
}

fn parse_trainer(buf: &[u8]) -> std::result::Result<TrainerSpec, String> {
    let mut w = Wire::new(buf);
    let mut t = TrainerSpec::default();
    while let Some((num, v)) = w.field().map_err(|e| format!("trainer_spec: {e}"))? {
        let b = |v, n| want_varint(v, n).map(|x| x != 0);
        match num {
            3 => t.model_type = want_varint(v, "trainer_spec.model_type")?,
            4 => t.vocab_size = want_varint(v, "trainer_spec.vocab_size")? as i64,
            35 => t.byte_fallback = b(v, "trainer_spec.byte_fallback")?,
            24 => t.treat_whitespace_as_suffix = b(v, "trainer_spec.treat_whitespace_as_suffix")?,
            25 => t.split_digits = b(v, "trainer_spec.split_digits")?,
            45 => t.unk_piece = want_string(v, "trainer_spec.unk_piece")?,
            46 => t.bos_piece = want_string(v, "trainer_spec.bos_piece")?,
            47 => t.eos_piece = want_string(v, "trainer_spec.eos_piece")?,
            48 => t.pad_piece = want_string(v, "trainer_spec.pad_piece")?,
            44 => t.unk_surface = Some(want_string(v, "trainer_spec.unk_surface")?),
            _ => {}
        }
    }
    Ok(t)
}

fn parse_normalizer(buf: &[u8], what: &str) -> std::result::Result<NormalizerSpec, String> {
    let mut w = Wire::new(buf);
    let mut n = NormalizerSpec::default();
    while let Some((num, v)) = w.field().map_err(|e| format!("{what}: {e}"))? {
        match num {
            1 => n.name = want_string(v, &format!("{what}.name"))?,
            2 => n.precompiled_charsmap = want_bytes(v, &format!("{what}.precompiled_charsmap"))?.to_vec(),
            3 => n.add_dummy_prefix = want_varint(v, &format!("{what}.add_dummy_prefix"))? != 0,
            4 => n.remove_extra_whitespaces = want_varint(v, &format!("{what}.remove_extra_whitespaces"))? != 0,
            5 => n.escape_whitespaces = want_varint(v, &format!("{what}.escape_whitespaces"))? != 0,
            6 => n.normalization_rule_tsv = want_string(v, &format!("{what}.normalization_rule_tsv"))?,
            _ => {}
        }
    }
    Ok(n)
}

impl ModelProto {
    /// Parse the serialized `ModelProto`; the message says which field is malformed.
    pub fn parse(buf: &[u8]) -> std::result::Result<Self, String> {
        let mut w = Wire::new(buf);
        let mut m = ModelProto::default();
        while let Some((num, v)) = w.field()? {
            match num {
                1 => {
                    let i = m.pieces.len();
                    m.pieces.push(parse_piece(want_bytes(v, "pieces")?, i)?);
                }
                2 => m.trainer = parse_trainer(want_bytes(v, "trainer_spec")?)?,
                3 => m.normalizer = parse_normalizer(want_bytes(v, "normalizer_spec")?, "normalizer_spec")?,
                5 => {
                    m.denormalizer = Some(parse_normalizer(
                        want_bytes(v, "denormalizer_spec")?,
                        "denormalizer_spec",
                    )?)
                }
                _ => {}
            }
        }
        Ok(m)
    }
}

// ---- the processor ----

/// U+2581, sentencepiece's escaped space.
const SPACE: &str = "\u{2581}";

/// A loaded SentencePiece BPE model: encode to ids and decode pieces as
/// `sentencepiece.SentencePieceProcessor` does.
#[derive(Debug, Clone)]
pub struct SentencePiece {
    pub proto: ModelProto,
    /// NORMAL, USER_DEFINED and UNUSED pieces (what BPE may merge into).
    pieces: HashMap<String, u32>,
    /// UNKNOWN, CONTROL and BYTE pieces.
    reserved: HashMap<String, u32>,
    /// User-defined symbols, matched whole before anything else (longest first).
    user_defined: HashMap<String, ()>,
    user_max_len: usize,
    unk_id: u32,
    byte_ids: [u32; 256],
}

impl SentencePiece {
    /// Read and check `tokenizer.model`; errors name the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<Self> {
        let buf = crate::util::read_file(path)?;
        let proto = ModelProto::parse(&buf)
            .map_err(|e| Error::input(path, format!("not a SentencePiece model (ModelProto): {e}")))?;
        Self::new(proto).map_err(|e| Error::input(path, e))
    }

    /// Build from a parsed model, with sentencepiece's load-time checks.
    pub fn new(proto: ModelProto) -> std::result::Result<Self, String> {
        let kind = match proto.trainer.model_type {
            1 => Some("unigram"),
            2 => None,
            3 => Some("word"),
            4 => Some("char"),
            _ => Some("unknown"),
        };
        if let Some(k) = kind {
            return Err(format!(
                "trainer_spec.model_type is {k} ({}); only BPE SentencePiece models are read (InternLM2's is BPE)",
                proto.trainer.model_type
            ));
        }
        if proto.pieces.is_empty() {
            return Err("the model has no pieces (an empty or non-SentencePiece file?)".into());
        }
        for (what, n) in [
            ("normalizer_spec", Some(&proto.normalizer)),
            ("denormalizer_spec", proto.denormalizer.as_ref()),
        ] {
            if let Some(n) = n {
                if !n.precompiled_charsmap.is_empty() {
                    return Err(format!(
                        "{what} has a precompiled charsmap (normalization rule {:?}), which perceptio does not implement; \
                         only the `identity` normaliser (InternLM2's) is read",
                        n.name
                    ));
                }
            }
        }
        let mut pieces = HashMap::new();
        let mut reserved = HashMap::new();
        let mut user_defined = HashMap::new();
        let mut unk = None;
        let mut byte_ids = [u32::MAX; 256];
        for (i, p) in proto.pieces.iter().enumerate() {
            let id = i as u32;
            if p.piece.is_empty() {
                return Err(format!("pieces[{i}] is empty"));
            }
            let normal = matches!(p.kind, PieceType::Normal | PieceType::UserDefined | PieceType::Unused);
            let map = if normal { &mut pieces } else { &mut reserved };
            if map.insert(p.piece.clone(), id).is_some() {
                return Err(format!("pieces[{i}] {:?} is already defined", p.piece));
            }
            match p.kind {
                PieceType::UserDefined => {
                    user_defined.insert(p.piece.clone(), ());
                }
                PieceType::Unknown if unk.is_some() => return Err(format!("pieces[{i}]: a second unknown piece")),
                PieceType::Unknown => unk = Some(id),
                PieceType::Byte => {
                    if !proto.trainer.byte_fallback {
                        return Err(format!("byte piece {:?} although byte_fallback is false", p.piece));
                    }
                    let b = piece_to_byte(&p.piece).ok_or_else(|| format!("byte piece {:?} is invalid", p.piece))?;
                    byte_ids[b as usize] = id;
                }
                _ => {}
            }
        }
        let unk_id = unk.ok_or("the model has no unknown piece")?;
        if proto.trainer.byte_fallback && byte_ids.contains(&u32::MAX) {
            return Err("byte_fallback is true but the 256 byte pieces are not all there".into());
        }
        let user_max_len = user_defined.keys().map(|k| k.len()).max().unwrap_or(0);
        Ok(Self {
            proto,
            pieces,
            reserved,
            user_defined,
            user_max_len,
            unk_id,
            byte_ids,
        })
    }

    pub fn piece_size(&self) -> usize {
        self.proto.pieces.len()
    }

    /// `PieceToId`: reserved pieces first, then the others, else the unknown id.
    pub fn piece_to_id(&self, piece: &str) -> u32 {
        self.reserved
            .get(piece)
            .or_else(|| self.pieces.get(piece))
            .copied()
            .unwrap_or(self.unk_id)
    }

    /// Whether `piece` is in the vocabulary at all.
    pub fn has_piece(&self, piece: &str) -> bool {
        self.reserved.contains_key(piece) || self.pieces.contains_key(piece)
    }

    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.proto.pieces.get(id as usize).map(|p| p.piece.as_str())
    }

    pub fn kind(&self, id: u32) -> Option<PieceType> {
        self.proto.pieces.get(id as usize).map(|p| p.kind)
    }

    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// `bos_id()`: the id of the trainer's bos piece when it is a control piece.
    pub fn bos_id(&self) -> Option<u32> {
        self.control_id(&self.proto.trainer.bos_piece, "<s>")
    }

    /// `eos_id()`, as `bos_id`.
    pub fn eos_id(&self) -> Option<u32> {
        self.control_id(&self.proto.trainer.eos_piece, "</s>")
    }

    fn control_id(&self, piece: &str, default: &str) -> Option<u32> {
        let p = if piece.is_empty() { default } else { piece };
        let id = self.piece_to_id(p);
        (self.kind(id) == Some(PieceType::Control)).then_some(id)
    }

    /// Length in bytes of the longest user-defined symbol at the start of `s` (0 if none).
    fn user_prefix(&self, s: &str) -> usize {
        if self.user_max_len == 0 {
            return 0;
        }
        let mut end = self.user_max_len.min(s.len());
        while end > 0 {
            if s.is_char_boundary(end) && self.user_defined.contains_key(&s[..end]) {
                return end;
            }
            end -= 1;
        }
        0
    }

    /// Normaliser without a charsmap (`Normalizer::Normalize` for the identity rule):
    /// user-defined symbols kept whole, extra whitespace removed if asked, the dummy prefix,
    /// spaces escaped to U+2581.
    pub fn normalize(&self, input: &str) -> String {
        let spec = &self.proto.normalizer;
        let suffix = self.proto.trainer.treat_whitespace_as_suffix;
        let ws: &str = if spec.escape_whitespaces { SPACE } else { " " };
        let mut input = input;
        if spec.remove_extra_whitespaces {
            // A user-defined symbol that starts with a space is not a space.
            while self.user_prefix(input) == 0 && input.starts_with(' ') {
                input = &input[1..];
            }
        }
        let mut out = String::with_capacity(input.len() * 3);
        if input.is_empty() {
            return out;
        }
        if !suffix && spec.add_dummy_prefix {
            out.push_str(ws);
        }
        let mut is_prev_space = spec.remove_extra_whitespaces;
        let mut rest = input;
        while !rest.is_empty() {
            let n = match self.user_prefix(rest) {
                0 => rest.chars().next().map_or(1, char::len_utf8),
                n => n,
            };
            let mut sp = &rest[..n];
            while is_prev_space && sp.starts_with(' ') {
                sp = &sp[1..];
            }
            if !sp.is_empty() {
                for c in sp.chars() {
                    if spec.escape_whitespaces && c == ' ' {
                        out.push_str(SPACE);
                    } else {
                        out.push(c);
                    }
                }
                is_prev_space = sp.ends_with(' ');
            }
            rest = &rest[n..];
            if !spec.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if spec.remove_extra_whitespaces {
            while out.ends_with(ws) {
                out.truncate(out.len() - ws.len());
            }
        }
        if suffix && spec.add_dummy_prefix {
            out.push_str(ws);
        }
        out
    }

    /// `bpe::Model::Encode` on normalized text: (piece, id) per symbol after merging.
    fn bpe<'a>(&self, normalized: &'a str) -> Vec<(&'a str, u32)> {
        #[derive(Clone, Copy)]
        struct Sym {
            prev: i64,
            next: i64,
            freeze: bool,
            start: usize,
            len: usize,
        }
        // Highest score first, then the leftmost pair (sentencepiece's SymbolPairComparator).
        #[derive(PartialEq)]
        struct Pair {
            score: f32,
            left: usize,
            right: usize,
            size: usize,
        }
        impl Eq for Pair {}
        impl Ord for Pair {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                // C++'s `<` on floats: -0 equals 0, and incomparable scores count as equal.
                let by_score = if self.score < o.score {
                    std::cmp::Ordering::Less
                } else if o.score < self.score {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                };
                by_score.then(o.left.cmp(&self.left))
            }
        }
        impl PartialOrd for Pair {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(normalized.len());
        let mut pos = 0;
        while pos < normalized.len() {
            let rest = &normalized[pos..];
            let u = self.user_prefix(rest);
            let n = if u > 0 {
                u
            } else {
                rest.chars().next().map_or(1, char::len_utf8)
            };
            let i = syms.len() as i64;
            syms.push(Sym {
                prev: i - 1,
                next: if pos + n >= normalized.len() { -1 } else { i + 1 },
                freeze: u > 0,
                start: pos,
                len: n,
            });
            pos += n;
        }
        let mut agenda = BinaryHeap::new();
        let mut rev_merge: HashMap<&str, (&str, &str)> = HashMap::new();
        let mut add = |syms: &[Sym], agenda: &mut BinaryHeap<Pair>, l: i64, r: i64| {
            if l < 0 || r < 0 {
                return;
            }
            let (a, b) = (syms[l as usize], syms[r as usize]);
            if a.freeze || b.freeze {
                return;
            }
            let piece = &normalized[a.start..a.start + a.len + b.len];
            let Some(&id) = self.pieces.get(piece) else {
                return;
            };
            let p = &self.proto.pieces[id as usize];
            agenda.push(Pair {
                score: p.score,
                left: l as usize,
                right: r as usize,
                size: piece.len(),
            });
            if p.kind == PieceType::Unused {
                rev_merge.insert(
                    piece,
                    (
                        &normalized[a.start..a.start + a.len],
                        &normalized[b.start..b.start + b.len],
                    ),
                );
            }
        };
        for i in 1..syms.len() as i64 {
            add(&syms, &mut agenda, i - 1, i);
        }
        while let Some(top) = agenda.pop() {
            let (l, r) = (syms[top.left], syms[top.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != top.size {
                continue;
            }
            syms[top.left].len += r.len;
            syms[top.left].next = r.next;
            if r.next >= 0 {
                syms[r.next as usize].prev = top.left as i64;
            }
            syms[top.right].len = 0;
            let (prev, next) = (syms[top.left].prev, syms[top.left].next);
            add(&syms, &mut agenda, prev, top.left as i64);
            add(&syms, &mut agenda, top.left as i64, next);
        }
        fn resegment<'a>(
            sp: &SentencePiece,
            rev: &HashMap<&'a str, (&'a str, &'a str)>,
            w: &'a str,
            out: &mut Vec<(&'a str, u32)>,
        ) {
            let id = sp.piece_to_id(w);
            if sp.kind(id) == Some(PieceType::Unused) {
                if let Some(&(a, b)) = rev.get(w) {
                    resegment(sp, rev, a, out);
                    resegment(sp, rev, b, out);
                    return;
                }
            }
            out.push((w, id));
        }
        let mut out = Vec::new();
        let mut i: i64 = if syms.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let s = syms[i as usize];
            resegment(self, &rev_merge, &normalized[s.start..s.start + s.len], &mut out);
            i = s.next;
        }
        out
    }

    /// `encode(text, out_type=str)` with the ids: byte fallback for unknown pieces, runs of
    /// unknown pieces merged when there is no byte fallback.
    pub fn encode_pieces(&self, text: &str) -> Vec<(String, u32)> {
        let normalized = self.normalize(text);
        let mut out: Vec<(String, u32)> = Vec::new();
        let mut prev_unk = false;
        for (w, id) in self.bpe(&normalized) {
            let unk = id == self.unk_id;
            if unk && self.proto.trainer.byte_fallback {
                for &b in w.as_bytes() {
                    out.push((byte_to_piece(b), self.byte_ids[b as usize]));
                }
            } else if unk && prev_unk {
                out.last_mut().unwrap().0.push_str(w);
            } else {
                out.push((w.to_string(), id));
            }
            prev_unk = unk;
        }
        out
    }

    /// `encode(text)`: the ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_pieces(text).into_iter().map(|(_, id)| id).collect()
    }

    /// `decode(pieces)` (`DecodePieces`): control pieces vanish, `<unk>` becomes the unknown
    /// surface, runs of byte pieces become UTF-8 (each invalid byte U+FFFD), U+2581 a space.
    pub fn decode_pieces<S: AsRef<str>>(&self, pieces: &[S]) -> String {
        let spec = &self.proto.normalizer;
        let strip_bos_ws = spec.add_dummy_prefix || spec.remove_extra_whitespaces;
        let mut text = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for p in pieces {
            let p = p.as_ref();
            let id = self.piece_to_id(p);
            if self.kind(id) == Some(PieceType::Byte) {
                bytes.push(piece_to_byte(p).unwrap_or(0));
                continue;
            }
            flush_bytes(&mut bytes, &mut text);
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            let (s, seen) = match self.kind(id) {
                Some(PieceType::Control) => (String::new(), false),
                Some(PieceType::Unknown) => {
                    if self.id_to_piece(id) == Some(p) {
                        let surface = self.proto.trainer.unk_surface.as_deref().unwrap_or(" \u{2047} ");
                        (surface.to_string(), false)
                    } else {
                        (p.to_string(), false)
                    }
                }
                _ => {
                    let mut piece = p;
                    let mut has = false;
                    if is_bos_ws && strip_bos_ws {
                        if let Some(r) = piece.strip_prefix(SPACE) {
                            piece = r;
                            has = true;
                        }
                        if spec.remove_extra_whitespaces {
                            has = false;
                        }
                    }
                    (piece.replace(SPACE, " "), has)
                }
            };
            bos_ws_seen = seen;
            text.push_str(&s);
        }
        flush_bytes(&mut bytes, &mut text);
        text
    }
}

/// Byte pieces → text the way `ProcessBytePieces` does: valid UTF-8 characters as they are,
/// every byte that does not start one → U+FFFD.
fn flush_bytes(bytes: &mut Vec<u8>, text: &mut String) {
    let mut i = 0;
    while i < bytes.len() {
        let n = match bytes[i] {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 0,
        };
        match (n > 0 && i + n <= bytes.len())
            .then(|| std::str::from_utf8(&bytes[i..i + n]).ok())
            .flatten()
        {
            Some(s) => {
                text.push_str(s);
                i += n;
            }
            None => {
                text.push('\u{fffd}');
                i += 1;
            }
        }
    }
    bytes.clear();
}

/// `<0xAB>` for byte 0xAB.
pub fn byte_to_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// The byte of a `<0xAB>` piece (upper-case hex, as sentencepiece writes them).
pub fn piece_to_byte(p: &str) -> Option<u8> {
    let h = p.strip_prefix("<0x")?.strip_suffix('>')?;
    if h.len() != 2 || !h.bytes().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)) {
        return None;
    }
    u8::from_str_radix(h, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_garbage_models_are_errors() {
        for bad in [
            &b"\x0a"[..],
            b"\x0a\x05\x0a\x03ab",
            b"\xff\xff\xff",
            b"\x0b\x00",
            b"",
            b"hello world",
        ] {
            let r = ModelProto::parse(bad)
                .map_err(|e| e.to_string())
                .and_then(SentencePiece::new);
            assert!(r.is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Random bytes, and the fixture model with bytes flipped or cut, never panic: they
        /// load (and then encode and decode) or give an error.
        #[test]
        fn never_panics(garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                        flips in proptest::collection::vec((0usize..70_000, proptest::prelude::any::<u8>()), 0..6),
                        cut in 0usize..80_000, text in "\\PC{0,40}") {
            let _ = ModelProto::parse(&garbage).and_then(SentencePiece::new);
            let mut m = include_bytes!("../../fixtures/tokenizer/internlm2-spm/tokenizer.model").to_vec();
            for (at, b) in flips {
                let n = m.len();
                m[at % n] = b;
            }
            m.truncate(cut.max(1));
            if let Ok(sp) = ModelProto::parse(&m).and_then(SentencePiece::new) {
                let pieces = sp.encode_pieces(&text);
                let _ = sp.decode_pieces(&pieces.iter().map(|p| p.0.as_str()).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn byte_pieces_round_trip() {
        for b in 0..=255u8 {
            assert_eq!(piece_to_byte(&byte_to_piece(b)), Some(b));
        }
        assert_eq!(piece_to_byte("<0xab>"), None);
        let mut t = String::new();
        flush_bytes(&mut vec![0xe4, 0xb8, b'a', 0xf0, 0x9f, 0x99, 0x82, 0x80], &mut t);
        assert_eq!(t, "\u{fffd}\u{fffd}a🙂\u{fffd}");
    }
}
