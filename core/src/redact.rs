//! Finding the values a statement carries as string literals, and taking
//! them out of text on its way to the server log.
//!
//! The caller is `emit_log_hook`, which runs while PostgreSQL reports an
//! error, possibly "out of memory". A failed Rust allocation aborts the
//! process, and PostgreSQL answers a backend abort by restarting the whole
//! cluster, so nothing here allocates infallibly: buffers grow through
//! `try_reserve` and every function says when it could not finish. Work is
//! bounded too: texts over [`MAX_TEXT`] are not lexed, and a [`Scrubber`]
//! gives up after scanning [`WORK_LIMIT`] bytes for one text. The caller
//! then replaces the whole text rather than log it as it was.
//!
//! Texts are bytes, not `str`: the server encoding need not be UTF-8. When
//! both are UTF-8, a pattern can only match on character boundaries (it
//! starts with a lead byte and ends after a whole character), so redaction
//! never splits a character.

use memchr::memmem;

/// Longest text that is lexed; longer statements are replaced whole.
pub const MAX_TEXT: usize = 1 << 20;
/// Shorter literals are left alone: they cannot hide much, and scrubbing
/// every `'a'` or `'id'` out of a message would leave it unreadable.
pub const MIN_LITERAL: usize = 3;
/// What a redacted value becomes.
pub const REDACTED: &[u8] = b"[redacted]";
/// Bytes a [`Scrubber`] may scan in one text before it gives up: a few
/// milliseconds. Thousands of patterns against a long text take more; that
/// text is then replaced whole.
pub const WORK_LIMIT: usize = 64 << 20;
/// How deep literals inside literals (a DO body, an EXECUTE format string)
/// are looked into.
const MAX_NESTING: u32 = 3;

/// The untranslated formats of PostgreSQL 13-18's statement logging
/// (src/backend/tcop/postgres.c): their message is the statement text and
/// their DETAIL is the text of a prepared statement ("prepare: ...") or the
/// bind parameters ("parameters: $1 = '...'").
pub const STATEMENT_LOG_FORMATS: &[&[u8]] = &[
    b"statement: %s",
    b"duration: %s ms  statement: %s",
    b"%s %s%s%s: %s",
    b"duration: %s ms  %s %s%s%s: %s",
    b"duration: %s ms  parse %s: %s",
    b"duration: %s ms  bind %s%s%s: %s",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedactError {
    /// The text is longer than [`MAX_TEXT`].
    TooLong,
    /// An allocation failed.
    OutOfMemory,
    /// Scrubbing would scan more than [`WORK_LIMIT`] bytes.
    TooMuchWork,
}

impl std::fmt::Display for RedactError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedactError::TooLong => "text too long to lex",
            RedactError::OutOfMemory => "out of memory",
            RedactError::TooMuchWork => "too much work",
        })
    }
}

impl std::error::Error for RedactError {}

pub type Result<T> = std::result::Result<T, RedactError>;

fn reserve<T>(v: &mut Vec<T>, more: usize) -> Result<()> {
    v.try_reserve(more).map_err(|_| RedactError::OutOfMemory)
}

fn push<T>(v: &mut Vec<T>, item: T) -> Result<()> {
    reserve(v, 1)?;
    v.push(item);
    Ok(())
}

fn extend(v: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    reserve(v, bytes.len())?;
    v.extend_from_slice(bytes);
    Ok(())
}

/// How to read quotes in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexing {
    /// Backslash escapes inside '...' (`standard_conforming_strings = off`).
    pub backslash_quotes: bool,
    /// "..." is an identifier to skip. Off for text that wraps SQL in double
    /// quotes, such as CONTEXT lines (`SQL statement "SELECT ..."`).
    pub quoted_identifiers: bool,
}

impl Lexing {
    /// A statement, as the server parses it.
    pub fn sql(standard_conforming_strings: bool) -> Lexing {
        Lexing { backslash_quotes: !standard_conforming_strings, quoted_identifiers: true }
    }

    /// A message that quotes statements or values (`SQL statement "..."`,
    /// `unnamed portal with parameters: $1 = '...'`).
    pub fn quoting(standard_conforming_strings: bool) -> Lexing {
        Lexing { backslash_quotes: !standard_conforming_strings, quoted_identifiers: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// '...', B'...', X'...', N'...', U&'...': only '' is an escape.
    Plain,
    /// E'...' (or '...' without standard_conforming_strings): backslash escapes.
    Escaped,
    /// $$...$$ or $tag$...$tag$: no escapes.
    Dollar,
}

/// The contents of one string literal: `text[start..end]`, quotes excluded.
/// An unterminated literal runs to the end of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Literal {
    pub start: usize,
    pub end: usize,
    pub quoting: Quoting,
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_tag_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_tag_cont(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// End (exclusive) of a quoted run that started before `from`; '' (or "")
/// doubles the quote, and with `backslash` a backslash escapes the next byte.
/// Returns (end of contents, index after the closing quote).
fn scan_quoted(text: &[u8], from: usize, quote: u8, backslash: bool) -> (usize, usize) {
    let n = text.len();
    let mut j = from;
    while j < n {
        let b = text[j];
        if b == quote {
            if text.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return (j, j + 1);
        }
        j += if backslash && b == b'\\' { 2 } else { 1 };
    }
    (n, n)
}

/// Index after a block comment starting at `i` (PostgreSQL nests them).
fn skip_block_comment(text: &[u8], i: usize) -> usize {
    let n = text.len();
    let mut depth = 0usize;
    let mut j = i;
    while j < n {
        if text[j] == b'/' && text.get(j + 1) == Some(&b'*') {
            depth += 1;
            j += 2;
        } else if text[j] == b'*' && text.get(j + 1) == Some(&b'/') {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    n
}

/// Index after the opening `$tag$` at `i`, if one starts there.
fn dollar_tag(text: &[u8], i: usize) -> Option<usize> {
    let n = text.len();
    let mut k = i + 1;
    if k < n && text[k] == b'$' {
        return Some(k + 1);
    }
    if k < n && is_tag_start(text[k]) {
        k += 1;
        while k < n && is_tag_cont(text[k]) {
            k += 1;
        }
        if k < n && text[k] == b'$' {
            return Some(k + 1);
        }
    }
    None
}

/// Calls `found` for every string literal of `text`, in order.
pub fn lex(text: &[u8], lexing: Lexing, mut found: impl FnMut(Literal) -> Result<()>) -> Result<()> {
    if text.len() > MAX_TEXT {
        return Err(RedactError::TooLong);
    }
    let n = text.len();
    let mut i = 0;
    while i < n {
        match text[i] {
            b'-' if text.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &text[i..]).map_or(n, |p| i + p + 1);
            }
            b'/' if text.get(i + 1) == Some(&b'*') => i = skip_block_comment(text, i),
            b'"' if lexing.quoted_identifiers => i = scan_quoted(text, i + 1, b'"', false).1,
            b'\'' => {
                // E'...' only where the E starts a token: `typE'x'` is an
                // identifier followed by a plain literal.
                let e_prefix = i >= 1
                    && (text[i - 1] == b'e' || text[i - 1] == b'E')
                    && (i == 1 || !is_ident(text[i - 2]));
                let escaped = lexing.backslash_quotes || e_prefix;
                let (end, next) = scan_quoted(text, i + 1, b'\'', escaped);
                let quoting = if escaped { Quoting::Escaped } else { Quoting::Plain };
                found(Literal { start: i + 1, end, quoting })?;
                i = next;
            }
            // `a$b$` is an identifier and `$1` a parameter, not a quote.
            b'$' if i == 0 || !is_ident(text[i - 1]) => match dollar_tag(text, i) {
                Some(start) => {
                    let tag = &text[i..start];
                    let end = memmem::find(&text[start..], tag).map_or(n, |p| start + p);
                    found(Literal { start, end, quoting: Quoting::Dollar })?;
                    i = (end + tag.len()).min(n);
                }
                None => i += 1,
            },
            _ => i += 1,
        }
    }
    Ok(())
}

fn hex(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// The value a literal stands for, written to `out`; false (and `out`
/// untouched) when it is its text as is.
pub fn decode(raw: &[u8], quoting: Quoting, out: &mut Vec<u8>) -> Result<bool> {
    let has_doubled = memmem::find(raw, b"''").is_some();
    let escapes = quoting == Quoting::Escaped && raw.contains(&b'\\');
    if quoting == Quoting::Dollar || !(has_doubled || escapes) {
        return Ok(false);
    }
    // Every escape writes at most as many bytes as it reads, so the pushes
    // below stay within this reservation.
    reserve(out, raw.len())?;
    let n = raw.len();
    let mut i = 0;
    while i < n {
        let b = raw[i];
        if b == b'\'' && raw.get(i + 1) == Some(&b'\'') {
            out.push(b'\'');
            i += 2;
            continue;
        }
        if b != b'\\' || quoting != Quoting::Escaped || i + 1 >= n {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' if raw.get(i).copied().and_then(hex).is_some() => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).copied().and_then(hex) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            b'u' | b'U' => {
                let digits = if c == b'u' { 4 } else { 8 };
                let code = raw
                    .get(i..i + digits)
                    .filter(|d| d.iter().all(|&b| hex(b).is_some()))
                    .map(|d| d.iter().fold(0u32, |v, &b| v * 16 + hex(b).unwrap_or(0)))
                    .and_then(char::from_u32);
                match code {
                    Some(ch) => {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        i += digits;
                    }
                    // Not a valid escape: keep what was written.
                    None => out.extend_from_slice(&[b'\\', c]),
                }
            }
            other => out.push(other),
        }
    }
    Ok(true)
}

/// Byte ranges of a text to redact.
#[derive(Debug, Default)]
pub struct Marks {
    ranges: Vec<Mark>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    start: usize,
    end: usize,
    /// A whole statement too long to lex: says how long it was.
    whole: bool,
}

impl Marks {
    pub fn new() -> Marks {
        Marks::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    fn add(&mut self, start: usize, end: usize, whole: bool) -> Result<()> {
        if end <= start {
            return Ok(());
        }
        // Matches of one pattern arrive in order and often overlap: merge
        // them here so the list stays short.
        if let Some(last) = self.ranges.last_mut() {
            if !whole && !last.whole && start >= last.start && start <= last.end {
                last.end = last.end.max(end);
                return Ok(());
            }
        }
        push(&mut self.ranges, Mark { start, end, whole })
    }

    /// Redacts `start..end`.
    pub fn mark(&mut self, start: usize, end: usize) -> Result<()> {
        self.add(start, end, false)
    }

    /// Replaces `start..end` by a note of its length.
    pub fn mark_whole(&mut self, start: usize, end: usize) -> Result<()> {
        self.add(start, end, true)
    }

    /// Redacts, in place, the contents of every literal of `text` (found at
    /// `base` of the text to render) of at least [`MIN_LITERAL`] bytes.
    pub fn literals(&mut self, text: &[u8], base: usize, lexing: Lexing) -> Result<()> {
        lex(text, lexing, |l| {
            if l.end - l.start >= MIN_LITERAL {
                self.mark(base + l.start, base + l.end)?;
            }
            Ok(())
        })
    }

    /// Redacts from the first double quote to the last: PostgreSQL quotes
    /// the input it rejects (`invalid input syntax for type integer: "..."`)
    /// without escaping, so for a value we could not learn this is the only
    /// safe reading.
    pub fn quoted(&mut self, text: &[u8], base: usize) -> Result<()> {
        if let (Some(first), Some(last)) = (memchr::memchr(b'"', text), memchr::memrchr(b'"', text)) {
            if last > first + 1 {
                self.mark(base + first + 1, base + last)?;
            }
        }
        Ok(())
    }

    /// Redacts the rest of the line after each place where PostgreSQL echoes
    /// an input into CONTEXT: portal parameters (`portal "p" parameter $1 =
    /// ...`, `unnamed portal with parameters: ...`) and the JSON text before
    /// a syntax error (`JSON data, line 1: ...`).
    pub fn echoed_inputs(&mut self, text: &[u8], base: usize) -> Result<()> {
        let line_end = |from: usize| memchr::memchr(b'\n', &text[from..]).map_or(text.len(), |p| from + p);
        for at in memmem::find_iter(text, b"with parameters: ") {
            let from = at + b"with parameters: ".len();
            self.mark(base + from, base + line_end(from))?;
        }
        for at in memmem::find_iter(text, b"parameter $") {
            let mut k = at + b"parameter $".len();
            while k < text.len() && text[k].is_ascii_digit() {
                k += 1;
            }
            if text[k..].starts_with(b" = ") {
                let from = k + 3;
                self.mark(base + from, base + line_end(from))?;
            }
        }
        for at in memmem::find_iter(text, b"JSON data, line ") {
            let from = at + b"JSON data, line ".len();
            let end = line_end(from);
            if let Some(colon) = memmem::find(&text[from..end], b": ") {
                self.mark(base + from + colon + 2, base + end)?;
            }
        }
        Ok(())
    }

    /// An EXPLAIN plan as auto_explain logs it (any format): from 16 on it
    /// lists the bound values (`Query Parameters: $1 = '...'`, or the
    /// JSON/YAML/XML key of that name), and a custom plan folds them in as
    /// constants (`'\x...'::bytea` under VERBOSE). Values print there
    /// escaped (hex bytea, doubled quotes) or cut short
    /// (`auto_explain.log_parameter_max_length`), so matching the raw values
    /// misses them: the parameter lines go whole, and every quoted constant
    /// of the plan too.
    pub fn explain_plan(&mut self, text: &[u8], base: usize) -> Result<()> {
        let line_end = |from: usize| memchr::memchr(b'\n', &text[from..]).map_or(text.len(), |p| from + p);
        for needle in [b"Query Parameters".as_slice(), b"Query-Parameters".as_slice()] {
            for at in memmem::find_iter(text, needle) {
                let from = at + needle.len();
                self.mark(base + from, base + line_end(from))?;
            }
        }
        for (start, end) in single_quoted(text) {
            if end > start {
                self.mark(base + start, base + end)?;
            }
        }
        Ok(())
    }

    /// Whether a message is an auto_explain plan (any output format).
    pub fn is_explain_plan(text: &[u8]) -> bool {
        [b"Query Text".as_slice(), b"Query-Text", b"Query Parameters", b"Query-Parameters"]
            .iter()
            .any(|n| memmem::find(text, n).is_some())
    }

    /// `text` with every marked range replaced; None when nothing is marked.
    pub fn render(mut self, text: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.ranges.is_empty() {
            return Ok(None);
        }
        self.ranges.sort_unstable_by_key(|m| (m.start, std::cmp::Reverse(m.end)));
        let mut out = Vec::new();
        reserve(&mut out, text.len().min(4096))?;
        let mut at = 0;
        let mut i = 0;
        while i < self.ranges.len() {
            let mut m = self.ranges[i];
            i += 1;
            // Overlapping and touching marks become one; a whole-text mark wins.
            while i < self.ranges.len() && self.ranges[i].start <= m.end {
                m.end = m.end.max(self.ranges[i].end);
                m.whole |= self.ranges[i].whole;
                i += 1;
            }
            let (start, end) = (m.start.min(text.len()), m.end.min(text.len()));
            if start < at {
                continue;
            }
            extend(&mut out, &text[at..start])?;
            if m.whole {
                extend(&mut out, b"[statement redacted by secret_vault (")?;
                extend(&mut out, decimal(end - start, &mut [0u8; 20]))?;
                extend(&mut out, b" bytes)]")?;
            } else {
                extend(&mut out, REDACTED)?;
            }
            at = end;
        }
        extend(&mut out, &text[at..])?;
        Ok(Some(out))
    }
}

fn decimal(mut v: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// The values to take out of a message: literals of statements and values
/// learned elsewhere (bind parameters), each at least [`MIN_LITERAL`] bytes.
#[derive(Debug)]
pub struct Scrubber {
    /// Every pattern's bytes, one after the other.
    bytes: Vec<u8>,
    /// Ranges of `bytes`, longest first once sorted.
    patterns: Vec<(usize, usize)>,
    sorted: bool,
}

impl Default for Scrubber {
    fn default() -> Self {
        Scrubber::new()
    }
}

impl Scrubber {
    pub fn new() -> Scrubber {
        Scrubber { bytes: Vec::new(), patterns: Vec::new(), sorted: true }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Number of distinct patterns.
    pub fn len(&mut self) -> usize {
        self.sort();
        self.patterns.len()
    }

    /// Takes `value` out of every text scrubbed; shorter values are ignored.
    pub fn add_value(&mut self, value: &[u8]) -> Result<()> {
        if value.len() < MIN_LITERAL {
            return Ok(());
        }
        let start = self.bytes.len();
        extend(&mut self.bytes, value)?;
        push(&mut self.patterns, (start, self.bytes.len()))?;
        self.sorted = false;
        Ok(())
    }

    /// Takes out every literal of `text`: as written and as the value it
    /// stands for, and the literals written inside it (a DO body, a string
    /// later run by EXECUTE), a few levels deep.
    pub fn add_sql(&mut self, text: &[u8], lexing: Lexing) -> Result<()> {
        self.add_nested(text, lexing, 0)
    }

    fn add_nested(&mut self, text: &[u8], lexing: Lexing, depth: u32) -> Result<()> {
        let mut decoded = Vec::new();
        lex(text, lexing, |l| {
            let raw = &text[l.start..l.end];
            self.add_value(raw)?;
            decoded.clear();
            let is_decoded = decode(raw, l.quoting, &mut decoded)?;
            if is_decoded {
                self.add_value(&decoded)?;
            }
            let value: &[u8] = if is_decoded { &decoded } else { raw };
            if depth < MAX_NESTING && (value.contains(&b'\'') || value.contains(&b'$')) {
                // A value that is SQL (a DO body) holds literals of its own.
                // One that is not only yields pieces of itself, which are
                // harmless to scrub as well.
                let inner = std::mem::take(&mut decoded);
                let r = self.add_nested(if is_decoded { &inner } else { raw }, lexing, depth + 1);
                decoded = inner;
                r?;
            }
            Ok(())
        })
    }

    fn sort(&mut self) {
        if self.sorted {
            return;
        }
        let bytes = &self.bytes;
        let key = |&(s, e): &(usize, usize)| (std::cmp::Reverse(e - s), &bytes[s..e]);
        self.patterns.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
        self.patterns.dedup_by(|a, b| bytes[a.0..a.1] == bytes[b.0..b.1]);
        self.sorted = true;
    }

    /// Marks every occurrence of every pattern in `text` (found at `base`
    /// of the text to render), overlapping ones included.
    pub fn mark(&mut self, text: &[u8], base: usize, marks: &mut Marks) -> Result<()> {
        self.sort();
        let Scrubber { bytes, patterns, .. } = self;
        let mut work_left = WORK_LIMIT;
        let mut charge = |n: usize| -> Result<()> {
            work_left = work_left.checked_sub(n).ok_or(RedactError::TooMuchWork)?;
            Ok(())
        };
        for &(s, e) in patterns.iter() {
            let m = e - s;
            if m > text.len() {
                continue;
            }
            charge(m)?;
            let finder = memmem::Finder::new(&bytes[s..e]);
            let mut from = 0;
            while from + m <= text.len() {
                match finder.find(&text[from..]) {
                    Some(p) => {
                        charge(p + m)?;
                        let at = from + p;
                        marks.mark(base + at, base + at + m)?;
                        from = at + 1;
                    }
                    None => {
                        charge(text.len() - from)?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// `text` with every pattern replaced by [`REDACTED`]; None when none occurs.
    pub fn scrub(&mut self, text: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut marks = Marks::new();
        self.mark(text, 0, &mut marks)?;
        marks.render(text)
    }
}

/// Whether a text names the vault ("vault", any case).
pub fn mentions_vault(text: &[u8]) -> bool {
    text.windows(5).any(|w| w.eq_ignore_ascii_case(b"vault"))
}

/// Whether a message names one of `functions` the way PostgreSQL's own
/// errors do before any vault code runs: `permission denied for function
/// create_secret`, `function create_secret(unknown, unknown) does not exist`,
/// optionally schema-qualified or quoted.
pub fn mentions_function(message: &[u8], functions: &[&str]) -> bool {
    memmem::find_iter(message, b"function ").any(|at| {
        let mut rest = &message[at + b"function ".len()..];
        // Skip one qualifier: `vault.`, `"vault".` or another schema.
        let ident_len = |t: &[u8]| {
            if t.first() == Some(&b'"') {
                scan_quoted(t, 1, b'"', false).1
            } else {
                t.iter().take_while(|&&b| is_ident(b)).count()
            }
        };
        let first = ident_len(rest);
        if rest.get(first) == Some(&b'.') {
            rest = &rest[first + 1..];
        }
        let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
        functions.iter().any(|f| {
            rest.starts_with(f.as_bytes()) && rest.get(f.len()).is_none_or(|&b| !is_ident(b))
        })
    })
}

/// Whether a statement calls one of `functions`, qualified or not
/// (`create_secret(`, `vault.create_secret (`, `"create_secret"(`): an
/// unqualified call is logged before it runs, whatever the search_path.
/// Unquoted names match in any case, as PostgreSQL folds them.
pub fn mentions_call(text: &[u8], functions: &[&str]) -> bool {
    memchr::memchr_iter(b'(', text).any(|p| {
        let mut end = p;
        while end > 0 && text[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        let quoted = end > 0 && text[end - 1] == b'"';
        if quoted {
            end -= 1;
        }
        let mut start = end;
        while start > 0 && is_ident(text[start - 1]) {
            start -= 1;
        }
        let name = &text[start..end];
        functions
            .iter()
            .any(|f| if quoted { name == f.as_bytes() } else { name.eq_ignore_ascii_case(f.as_bytes()) })
    })
}

/// Index of the first byte at or after `i` that is neither blank nor in a comment.
fn skip_blanks(text: &[u8], mut i: usize) -> usize {
    loop {
        while i < text.len() && text[i].is_ascii_whitespace() {
            i += 1;
        }
        if text[i..].starts_with(b"--") {
            i = memchr::memchr(b'\n', &text[i..]).map_or(text.len(), |p| i + p + 1);
        } else if text[i..].starts_with(b"/*") {
            i = skip_block_comment(text, i);
        } else {
            return i;
        }
    }
}

/// PostgreSQL's NAMEDATALEN: identifiers are cut to one byte less.
pub const NAMEDATALEN: usize = 64;

/// The name of the prepared statement that `sql` runs, when `sql` is an
/// `EXECUTE name [(...)]` statement, folded as PostgreSQL folds it and
/// NUL-padded, ready for a lookup. Statement logging shows only the EXECUTE;
/// whether it is about the vault is in the prepared text.
pub fn execute_target(sql: &[u8]) -> Option<[u8; NAMEDATALEN]> {
    let i = skip_blanks(sql, 0);
    let keyword = sql.get(i..i + 7)?;
    if !keyword.eq_ignore_ascii_case(b"execute") || sql.get(i + 7).is_some_and(|&b| is_ident(b)) {
        return None;
    }
    let i = skip_blanks(sql, i + 7);
    let mut name = [0u8; NAMEDATALEN];
    let mut len = 0;
    let mut put = |b: u8| {
        if len < NAMEDATALEN - 1 {
            name[len] = b;
            len += 1;
        }
    };
    match sql.get(i) {
        Some(b'"') => {
            let (end, _) = scan_quoted(sql, i + 1, b'"', false);
            let mut j = i + 1;
            while j < end {
                put(sql[j]);
                j += if sql[j] == b'"' { 2 } else { 1 };
            }
        }
        Some(&b) if is_tag_start(b) => {
            for &b in sql[i..].iter().take_while(|&&b| is_ident(b)) {
                put(b.to_ascii_lowercase());
            }
        }
        _ => return None,
    }
    (len > 0).then_some(name)
}

/// Untranslated formats of messages whose DETAIL quotes other processes'
/// statements: the postmaster's report of a backend that crashed or was
/// killed ("Failed process was running: ..."), and a deadlock ("Process
/// 123: ..." for each process, in the log-only DETAIL).
pub const STATEMENT_QUOTING_FORMATS: &[&[u8]] = &[
    b"%s (PID %d) exited with exit code %d",
    b"%s (PID %d) was terminated by exception 0x%X",
    b"%s (PID %d) was terminated by signal %d: %s",
    b"%s (PID %d) exited with unrecognized status %d",
    b"deadlock detected",
];

/// Whether the DETAIL of a message (of `format`, when known) quotes the
/// statements of other processes, whose literals are not known: these are
/// redacted wherever they are. By format, so translated messages count; by
/// text, for messages raised again under another format.
pub fn quotes_statements(format: Option<&[u8]>, detail: &[u8]) -> bool {
    if format.is_some_and(|f| STATEMENT_QUOTING_FORMATS.contains(&f)) {
        return true;
    }
    if find(detail, b"Failed process was running: ").is_some() {
        return true;
    }
    memmem::find_iter(detail, b"Process ").any(|at| {
        let rest = &detail[at + b"Process ".len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        digits > 0 && rest[digits..].starts_with(b": ")
    })
}

/// Whether a message format is one of PostgreSQL's statement-logging ones.
pub fn is_statement_log(format: &[u8]) -> bool {
    STATEMENT_LOG_FORMATS.contains(&format)
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memmem::find(haystack, needle)
}

/// The contents of every single-quoted run of `text` (`''` inside one is an
/// escaped quote); an unterminated one runs to the end. A plan is not SQL
/// (the lexer may reject it), so this reads quotes only.
fn single_quoted(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'\'', &text[i..]) {
        let start = i + p + 1;
        let mut k = start;
        loop {
            match memchr::memchr(b'\'', &text[k..]) {
                Some(q) if text.get(k + q + 1) == Some(&b'\'') => k += q + 2,
                Some(q) => {
                    out.push((start, k + q));
                    i = k + q + 1;
                    break;
                }
                None => {
                    out.push((start, text.len()));
                    return out;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQL: Lexing = Lexing { backslash_quotes: false, quoted_identifiers: true };
    const QUOTING: Lexing = Lexing { backslash_quotes: false, quoted_identifiers: false };

    fn literals(text: &str, lexing: Lexing) -> Vec<String> {
        let mut out = Vec::new();
        lex(text.as_bytes(), lexing, |l| {
            out.push(String::from_utf8_lossy(&text.as_bytes()[l.start..l.end]).into_owned());
            Ok(())
        })
        .unwrap();
        out
    }

    fn scrub(sql: &str, text: &str) -> String {
        let mut s = Scrubber::new();
        s.add_sql(sql.as_bytes(), SQL).unwrap();
        match s.scrub(text.as_bytes()).unwrap() {
            Some(v) => String::from_utf8(v).unwrap(),
            None => text.to_string(),
        }
    }

    fn in_place(sql: &str, lexing: Lexing) -> String {
        let mut m = Marks::new();
        m.literals(sql.as_bytes(), 0, lexing).unwrap();
        m.render(sql.as_bytes()).unwrap().map_or(sql.to_string(), |v| String::from_utf8(v).unwrap())
    }

    fn decoded(raw: &str, quoting: Quoting) -> Vec<u8> {
        let mut out = Vec::new();
        if decode(raw.as_bytes(), quoting, &mut out).unwrap() {
            out
        } else {
            raw.as_bytes().to_vec()
        }
    }

    #[test]
    fn plain_literals_with_doubled_quotes() {
        assert_eq!(literals("SELECT vault.create_secret('n', 'it''s')", SQL), ["n", "it''s"]);
        assert_eq!(decoded("it''s", Quoting::Plain), b"it's");
        assert_eq!(literals("SELECT ''", SQL), [""]);
        assert_eq!(literals("SELECT '''x'''", SQL), ["''x''"]);
    }

    #[test]
    fn escape_strings_and_their_values() {
        assert_eq!(literals(r"SELECT E'a\'b', e'c\\'", SQL), [r"a\'b", r"c\\"]);
        assert_eq!(decoded(r"a\'b", Quoting::Escaped), b"a'b");
        assert_eq!(decoded(r"\x53\105N\tT\u0049\U0000004eEL\q", Quoting::Escaped), b"SEN\tTINELq");
        assert_eq!(decoded(r"line\nbreak''", Quoting::Escaped), b"line\nbreak'");
        // `typE'x'` is an identifier and a plain literal: the backslash is data.
        let l: Vec<_> = {
            let mut v = Vec::new();
            lex(br"typE'a\' x'", SQL, |l| {
                v.push(l.quoting);
                Ok(())
            })
            .unwrap();
            v
        };
        assert_eq!(l[0], Quoting::Plain);
        // Without standard_conforming_strings, every '...' takes backslashes.
        assert_eq!(literals(r"SELECT 'a\'b'", Lexing::sql(false)), [r"a\'b"]);
    }

    #[test]
    fn prefixed_literals_are_plain_literals() {
        assert_eq!(literals("SELECT U&'d\\0061t', B'101', X'ff', N'nat'", SQL), ["d\\0061t", "101", "ff", "nat"]);
    }

    #[test]
    fn dollar_quotes_with_and_without_tags() {
        assert_eq!(literals("DO $$ BEGIN PERFORM 'x'; END $$", SQL), [" BEGIN PERFORM 'x'; END "]);
        assert_eq!(literals("SELECT $a$ $$ inside $a$, $b$x$b$", SQL), [" $$ inside ", "x"]);
        // Parameters and identifiers containing $ are not quotes.
        assert_eq!(literals("SELECT $1, a$b$c, 'v'", SQL), ["v"]);
        // An unterminated quote runs to the end.
        assert_eq!(literals("SELECT $t$ never closed", SQL), [" never closed"]);
        assert_eq!(literals("SELECT 'never closed", SQL), ["never closed"]);
    }

    #[test]
    fn identifiers_and_comments_are_not_literals() {
        assert_eq!(literals(r#"SELECT "it's" FROM "a""b" -- don't"#, SQL), Vec::<String>::new());
        assert_eq!(literals("SELECT /* a /* nested 'x' */ still 'y' */ 'z'", SQL), ["z"]);
        assert_eq!(literals("SELECT 1 -- 'no'\n, 'yes'", SQL), ["yes"]);
        // In a CONTEXT line, double quotes wrap SQL instead.
        assert_eq!(literals(r#"SQL statement "SELECT vault.read_secret('abc')""#, QUOTING), ["abc"]);
    }

    #[test]
    fn texts_over_the_cap_are_not_lexed() {
        let big = vec![b'x'; MAX_TEXT + 1];
        assert_eq!(lex(&big, SQL, |_| Ok(())), Err(RedactError::TooLong));
        assert_eq!(Scrubber::new().add_sql(&big, SQL), Err(RedactError::TooLong));
    }

    #[test]
    fn scrubs_each_literal_wherever_it_appears() {
        assert_eq!(
            scrub(
                "SELECT vault.resolve('grp', 'SENTINEL-1')",
                "invalid input syntax for type integer: \"SENTINEL-1\""
            ),
            "invalid input syntax for type integer: \"[redacted]\""
        );
        assert_eq!(scrub("SELECT 'abc'", "abc abcabc xabcx"), "[redacted] [redacted] x[redacted]x");
    }

    #[test]
    fn short_literals_are_left_alone() {
        assert_eq!(scrub("SELECT vault.rotate('g'), 'id'", "key group \"g\" has id 1"), "key group \"g\" has id 1");
        assert_eq!(in_place("SELECT vault.create_secret('n', 'SENTINEL')", SQL), "SELECT vault.create_secret('n', '[redacted]')");
    }

    #[test]
    fn longest_match_wins_and_overlaps_merge() {
        assert_eq!(scrub("SELECT 'secret', 'secret-value'", "was secret-value!"), "was [redacted]!");
        assert_eq!(scrub("SELECT 'abcd', 'cdef'", "abcdef"), "[redacted]");
        // Overlapping occurrences of one pattern are all found.
        assert_eq!(scrub("SELECT 'aaaa'", "aaaaaa b"), "[redacted] b");
    }

    #[test]
    fn values_written_with_escapes_are_scrubbed_as_written_and_as_values() {
        assert_eq!(scrub(r"SELECT E'SEN\x54INEL'", "got \"SENTINEL\""), "got \"[redacted]\"");
        assert_eq!(scrub(r"SELECT E'SEN\x54INEL'", r"statement: SELECT E'SEN\x54INEL'"), "statement: SELECT E'[redacted]'");
        assert_eq!(scrub("SELECT 'it''s secret'", "\"it's secret\""), "\"[redacted]\"");
    }

    #[test]
    fn literals_inside_do_bodies_and_format_strings_are_found() {
        let sql = "DO $$ BEGIN PERFORM vault.create_secret('n', 'SENTINEL-2'); END $$";
        assert_eq!(
            scrub(sql, "SQL statement \"SELECT vault.create_secret('n', 'SENTINEL-2')\""),
            "SQL statement \"SELECT vault.create_secret('n', '[redacted]')\""
        );
        let sql = "SELECT format('SELECT vault.read_secret(''SENTINEL-3'')')";
        assert_eq!(scrub(sql, "secret \"SENTINEL-3\" does not exist"), "secret \"[redacted]\" does not exist");
    }

    #[test]
    fn utf8_values_are_replaced_on_character_boundaries() {
        let out = scrub("SELECT 'clé-été'", "« clé-été » ok");
        assert_eq!(out, "« [redacted] » ok");
        assert!(std::str::from_utf8(out.as_bytes()).is_ok());
    }

    #[test]
    fn nothing_to_scrub_returns_none() {
        let mut s = Scrubber::new();
        s.add_sql(b"SELECT vault.stats()", SQL).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.scrub(b"anything").unwrap(), None);
        s.add_value(b"value").unwrap();
        assert_eq!(s.scrub(b"no match").unwrap(), None);
    }

    #[test]
    fn duplicate_literals_are_kept_once() {
        let mut s = Scrubber::new();
        s.add_sql(b"SELECT 'abc', 'abc', 'abcd'", SQL).unwrap();
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn scrubbing_gives_up_past_the_work_limit() {
        let mut s = Scrubber::new();
        for i in 0..200u32 {
            s.add_value(format!("pattern-{i}").as_bytes()).unwrap();
        }
        let text = vec![b'x'; WORK_LIMIT / 100];
        assert_eq!(s.scrub(&text), Err(RedactError::TooMuchWork));
        // The limit is per text: a short one is still scrubbed.
        assert_eq!(s.scrub(b"a pattern-7 here").unwrap().unwrap(), b"a [redacted] here");
    }

    #[test]
    fn whole_statement_marks_say_how_long_it_was() {
        let mut m = Marks::new();
        let text = b"statement: SELECT 1";
        m.mark_whole(11, text.len()).unwrap();
        assert_eq!(m.render(text).unwrap().unwrap(), b"statement: [statement redacted by secret_vault (8 bytes)]");
    }

    #[test]
    fn quoted_marks_run_from_the_first_quote_to_the_last() {
        let text = br#"invalid input syntax for type integer: "SEN"TINEL""#;
        let mut m = Marks::new();
        m.quoted(text, 0).unwrap();
        assert_eq!(m.render(text).unwrap().unwrap(), br#"invalid input syntax for type integer: "[redacted]""#);
        let mut m = Marks::new();
        m.quoted(b"no quotes", 0).unwrap();
        assert!(m.is_empty());
    }

    #[test]
    fn auto_explain_plans_lose_parameter_lines_and_quoted_constants() {
        let plan = "duration: 0.512 ms  plan:\n\
                    Query Text: SELECT vault.encrypt($1, $2)\n\
                    Query Parameters: $1 = 'big', $2 = '\\x53454e54494e454c'\n\
                    Result  (cost=0.00..0.01 rows=1 width=32)\n\
                    \x20 Output: vault.encrypt('big'::text, '\\x53454e54494e454c'::bytea, 'it''s'::bytea)";
        assert!(Marks::is_explain_plan(plan.as_bytes()));
        let mut m = Marks::new();
        m.explain_plan(plan.as_bytes(), 0).unwrap();
        let out = String::from_utf8(m.render(plan.as_bytes()).unwrap().unwrap()).unwrap();
        assert!(!out.contains("53454e54494e454c") && !out.contains("it''s"), "{out}");
        assert!(out.contains("Query Parameters[redacted]") && out.contains("Output: vault.encrypt('[redacted]'::text"), "{out}");
        let json = "{\"Query Text\": \"SELECT vault.encrypt($1, $2)\",\n \"Query Parameters\": \"$1 = 'a', $2 = '\\\\x41'\",\n \"Plan\": {}}";
        let mut m = Marks::new();
        m.explain_plan(json.as_bytes(), 0).unwrap();
        let out = String::from_utf8(m.render(json.as_bytes()).unwrap().unwrap()).unwrap();
        assert!(!out.contains("x41"), "{out}");
        assert!(!Marks::is_explain_plan(b"statement: SELECT 1"));
    }

    #[test]
    fn echoed_inputs_in_context_lines_are_cut() {
        let ctx = "unnamed portal with parameters: $1 = 'SENTINEL', $2 = 'x'\n\
                   portal \"c1\" parameter $2 = '...'\n\
                   JSON data, line 1: {\"a\": SENTINEL\n\
                   PL/pgSQL function f(text) line 3 at PERFORM";
        let mut m = Marks::new();
        m.echoed_inputs(ctx.as_bytes(), 0).unwrap();
        let out = String::from_utf8(m.render(ctx.as_bytes()).unwrap().unwrap()).unwrap();
        assert_eq!(
            out,
            "unnamed portal with parameters: [redacted]\n\
             portal \"c1\" parameter $2 = [redacted]\n\
             JSON data, line 1: [redacted]\n\
             PL/pgSQL function f(text) line 3 at PERFORM"
        );
    }

    #[test]
    fn in_place_redaction_of_a_context_quoting_sql() {
        let ctx = "SQL statement \"SELECT vault.create_secret('app/key', 'SENTINEL')\"\nPL/pgSQL function inline_code_block line 1 at PERFORM";
        assert_eq!(
            in_place(ctx, QUOTING),
            "SQL statement \"SELECT vault.create_secret('[redacted]', '[redacted]')\"\nPL/pgSQL function inline_code_block line 1 at PERFORM"
        );
    }

    #[test]
    fn vault_and_function_mentions() {
        assert!(mentions_vault(b"SELECT VAULT.read_secret('x')"));
        assert!(!mentions_vault(b"SELECT 1"));
        let f = ["create_secret", "rotate", "current"];
        assert!(mentions_function(b"permission denied for function create_secret", &f));
        assert!(mentions_function(b"function create_secret(unknown, unknown) does not exist", &f));
        assert!(mentions_function(b"function vault.rotate(integer) does not exist", &f));
        assert!(mentions_function(b"function \"vault\".\"current\"(text) does not exist", &f));
        assert!(!mentions_function(b"function rotate_logs() does not exist", &f));
        assert!(!mentions_function(b"permission denied for table create_secret", &f));
    }

    #[test]
    fn calls_by_name() {
        let f = ["create_secret", "current"];
        assert!(mentions_call(b"SELECT create_secret('n', 'v')", &f));
        assert!(mentions_call(b"SELECT x.CREATE_SECRET ('n', 'v')", &f));
        assert!(mentions_call(b"SELECT * FROM \"current\"('g')", &f));
        assert!(!mentions_call(b"SELECT \"Current\"('g')", &f));
        assert!(!mentions_call(b"SELECT current_setting('x'), my$current('y'), current", &f));
    }

    #[test]
    fn the_prepared_statement_an_execute_runs() {
        let name = |sql: &str| execute_target(sql.as_bytes()).map(|n| String::from_utf8_lossy(&n).trim_end_matches('\0').to_string());
        assert_eq!(name("EXECUTE lr_p('a', 'b')").as_deref(), Some("lr_p"));
        assert_eq!(name("  /* c */ execute\n  My_Plan").as_deref(), Some("my_plan"));
        assert_eq!(name("-- c\nEXECUTE \"Odd \"\"Name\"\"\"(1)").as_deref(), Some("Odd \"Name\""));
        assert_eq!(name(&format!("EXECUTE {}", "x".repeat(100))).map(|n| n.len()), Some(NAMEDATALEN - 1));
        assert_eq!(name("EXECUTED x"), None);
        assert_eq!(name("SELECT 1"), None);
        assert_eq!(name("EXECUTE"), None);
        assert_eq!(name("EXECUTE 'x'"), None);
    }

    #[test]
    fn details_quoting_other_statements() {
        assert!(quotes_statements(None, b"Failed process was running: SELECT vault.read_secret('x')"));
        assert!(quotes_statements(
            None,
            b"Process 12 waits for ShareLock on transaction 7; blocked by process 13.\nProcess 12: SELECT 1\nProcess 13: SELECT 2"
        ));
        assert!(quotes_statements(Some(b"deadlock detected"), b"Le processus 12 ..."));
        assert!(!quotes_statements(None, b"Process holding the lock: 13. Wait queue: 12."));
        assert!(!quotes_statements(Some(b"statement: %s"), b"Key (name)=(x) already exists."));
    }

    #[test]
    fn statement_log_formats() {
        assert!(is_statement_log(b"duration: %s ms  bind %s%s%s: %s"));
        assert!(is_statement_log(b"statement: %s"));
        assert!(!is_statement_log(b"duration: %s ms"));
    }

    proptest::proptest! {
        /// Whatever the statement and the text, no literal value of three
        /// bytes or more survives scrubbing. The alphabet has no letter of
        /// "[redacted]", so a survivor could not be made up of the marker.
        #[test]
        fn no_literal_survives(
            values in proptest::collection::vec("[xy']{0,10}", 1..6),
            filler in proptest::collection::vec("[xy' ]{0,8}", 3),
        ) {
            let quoted: Vec<String> = values.iter().map(|v| format!("'{}'", v.replace('\'', "''"))).collect();
            let sql = format!("SELECT {}", quoted.join(", "));
            let text = format!("{}{}{}", filler[0], values.join(&filler[1]), filler[2]);
            let out = scrub(&sql, &text);
            for v in values.iter().filter(|v| v.len() >= MIN_LITERAL) {
                proptest::prop_assert!(!out.contains(v.as_str()), "{v:?} survived in {out:?} ({sql})");
            }
        }

        /// The lexer and the markers never panic, and literals lie inside the text.
        #[test]
        fn lexer_is_total(text in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            lex(&text, SQL, |l| {
                assert!(l.start <= l.end && l.end <= text.len());
                Ok(())
            }).unwrap();
            let mut m = Marks::new();
            m.literals(&text, 0, QUOTING).unwrap();
            m.echoed_inputs(&text, 0).unwrap();
            m.quoted(&text, 0).unwrap();
            let _ = m.render(&text).unwrap();
            let mut s = Scrubber::new();
            s.add_sql(&text, Lexing::sql(false)).unwrap();
            let _ = s.scrub(&text).unwrap();
        }
    }
}
