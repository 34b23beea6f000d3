//! Keeps values passed to vault functions out of the server log.
//!
//! PostgreSQL writes statement texts to its log from places an extension
//! does not control: `log_statement`, `log_min_duration_statement` (with
//! the bind parameters, or the text of the prepared statement, as DETAIL),
//! the STATEMENT line of a failing call (`log_min_error_statement`), and its
//! own errors that quote an input (`invalid input syntax for type integer:
//! "..."`). Every message bound for the log passes through `emit_log_hook`;
//! for a message about a vault call this hook
//!
//! - drops the STATEMENT line (`hide_stmt`): it prints the statement as sent;
//! - where the message is the statement (statement logging, auto_explain),
//!   replaces its string literals in place;
//! - elsewhere in the message, detail, hint, context and internal query,
//!   replaces every occurrence of those literals' values, of the bind
//!   parameters, and of the literals of the prepared statement, cursor or
//!   PL/pgSQL statement behind the call;
//! - replaces statement logging's DETAIL of bind parameters, and the
//!   parameters PostgreSQL echoes into CONTEXT;
//! - redacts every literal of the statements other processes ran where a
//!   DETAIL quotes them: a crashed or killed backend's (logged by the
//!   postmaster) and a deadlock's.
//!
//! A message is about a vault call when the statement, the search_path or
//! the message names the vault, when a statement calls a function by one of
//! the vault's names (`create_secret(...)` with vault on the search_path),
//! when it is our own error, or when a vault function ran in the current
//! statement ([`note_vault_call`]): that catches wrappers whose text never
//! says "vault", once they have called it.
//!
//! PostgreSQL hands the same ErrorData to the client after the log, so the
//! client sees the redacted text too.
//!
//! The hook runs inside error reporting, maybe while memory is exhausted:
//! it never raises an ERROR (a panic is caught, and the message then stays
//! out of the log), never reads the catalog, and never lets Rust abort on a
//! failed allocation. A field it cannot rewrite is replaced by a fixed text,
//! or dropped, never logged as it was.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr};
use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::prelude::*;
use secret_vault_core::redact::{self, Lexing, Marks, RedactError, Scrubber};

use crate::guc;

/// Every SQL function of the extension, present and planned (DESIGN.md).
/// "permission denied for function create_secret" is raised before any
/// vault code runs, about a call whose text and search_path may never say
/// "vault".
const SQL_FUNCTIONS: &[&str] = &[
    "create_secret",
    "create_rotating_secret",
    "read_secret",
    "update_secret",
    "rotate_secret",
    "verify_secret",
    "delete_secret",
    "secret_versions",
    "_open_secret",
    "create_group",
    "rotate",
    "retire",
    "destroy",
    "drop_group",
    "move_group",
    "current",
    "resolve",
    "encrypt",
    "decrypt",
    "stats",
    "worker_status",
    "worker_item_failures",
    "create_credential",
    "credential",
    "drop_credential",
    "grant_access",
    "revoke_access",
    "set_allowed_addresses",
    "unlock",
    "verify_audit",
    "_set_allowed_addresses",
    "_unlock",
    "_lockouts",
    "_visible",
    "_may",
    "add_kms_key",
    "set_default_kms_key",
    "drop_kms_key",
    "rewrap",
];

/// Most bytes of inputs remembered per statement: a secret value may be 1 MiB.
const MAX_INPUT_BYTES: usize = 2 * redact::MAX_TEXT + 4096;
/// Most inputs remembered per statement.
const MAX_INPUTS: usize = 64;
/// A buffer grown past this for one statement is given back at the next.
const KEEP_CAPACITY: usize = 64 << 10;
/// PostgreSQL's MaxAllocSize: a larger request raises an ERROR even with
/// MCXT_ALLOC_NO_OOM, which must not happen inside error reporting.
const MAX_ALLOC: usize = 0x3fff_ffff;

const FIXED_MESSAGE: &[u8] = b"[message redacted by secret_vault]";
const FIXED_DETAIL: &[u8] = b"[detail redacted by secret_vault]";
const FIXED_HINT: &[u8] = b"[hint redacted by secret_vault]";
const FIXED_CONTEXT: &[u8] = b"[context redacted by secret_vault]";
const FIXED_QUERY: &[u8] = b"[query redacted by secret_vault]";
const FIXED_PARAMETERS: &[u8] = b"parameters redacted by secret_vault";

static mut PREV_EMIT_LOG: pg_sys::emit_log_hook_type = None;

/// What the current statement handed the vault without showing it in its
/// own text: the text of the prepared statement an EXECUTE runs (or of a
/// cursor's query), whose literals are the values. Bind parameter values
/// are not copied (see `remember_portal`).
struct Inputs {
    bytes: Vec<u8>,
    /// Byte ranges of `bytes`, one per statement text.
    items: Vec<(usize, usize)>,
    /// Portals already remembered in this statement: a PL/pgSQL cursor
    /// loop switches between two of them on every row.
    portals: [usize; MAX_PORTALS],
    /// Something was not remembered: the hook redacts quoted text bluntly.
    incomplete: bool,
}

/// Most portals remembered per statement.
const MAX_PORTALS: usize = 8;

impl Inputs {
    const fn new() -> Inputs {
        Inputs { bytes: Vec::new(), items: Vec::new(), portals: [0; MAX_PORTALS], incomplete: false }
    }

    fn clear(&mut self) {
        // Statement texts may hold literal values: wiped, not just dropped.
        zeroize::Zeroize::zeroize(&mut self.bytes);
        if self.bytes.capacity() > KEEP_CAPACITY {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
        self.items.clear();
        self.portals = [0; MAX_PORTALS];
        self.incomplete = false;
    }

    /// False when `portal` was remembered already (or there is no room to
    /// remember more: then the hook is blunt).
    fn first_visit(&mut self, portal: usize) -> bool {
        if self.portals.contains(&portal) {
            return false;
        }
        match self.portals.iter_mut().find(|p| **p == 0) {
            Some(free) => {
                *free = portal;
                true
            }
            None => {
                self.incomplete = true;
                false
            }
        }
    }

    fn add(&mut self, value: &[u8]) {
        if value.len() < redact::MIN_LITERAL {
            return;
        }
        let fits = self.items.len() < MAX_INPUTS
            && self.bytes.len() + value.len() <= MAX_INPUT_BYTES
            && self.bytes.try_reserve(value.len()).is_ok()
            && self.items.try_reserve(1).is_ok();
        if !fits {
            self.incomplete = true;
            return;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.items.push((start, self.bytes.len()));
    }
}

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    /// Start of the last statement that called a vault function, and the
    /// portal the call ran in.
    static NOTED_AT: Cell<pg_sys::TimestampTz> = const { Cell::new(pg_sys::TimestampTz::MIN) };
    static NOTED_PORTAL: Cell<usize> = const { Cell::new(0) };
    static INPUTS: RefCell<Inputs> = const { RefCell::new(Inputs::new()) };
}

thread_local! {
    static AUDIT_LINE: Cell<bool> = const { Cell::new(false) };
}

/// Writes an audit record to the server log (standbys, or a full queue
/// with `secret_vault.audit_when_full = log`). Its text is built by the
/// audit module from names and outcomes, never values, and must reach the
/// log as written: the redaction would otherwise replace the object's name
/// wherever the statement quotes it. The statement line is still hidden.
pub fn log_audit(line: &str) {
    AUDIT_LINE.set(true);
    pgrx::log!("{line}");
    AUDIT_LINE.set(false);
}

/// Installs the hook; called from `_PG_init` in the postmaster, so every
/// process inherits it.
pub fn init() {
    unsafe {
        PREV_EMIT_LOG = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(emit_log);
    }
}

/// Records that a vault function runs in the current statement, so that
/// every message of the statement counts as about the vault, and remembers
/// the statement's hidden inputs. On every vault call: the check is two
/// thread-local reads; the rest happens once per statement and portal.
#[inline]
pub fn note_vault_call() {
    // SAFETY: reads of backend-local globals.
    let (at, portal) = unsafe { (pg_sys::GetCurrentStatementStartTimestamp(), pg_sys::ActivePortal) };
    if NOTED_AT.get() != at || NOTED_PORTAL.get() != portal as usize {
        note_statement(at, portal);
    }
}

#[cold]
fn note_statement(at: pg_sys::TimestampTz, portal: pg_sys::Portal) {
    let new_statement = NOTED_AT.replace(at) != at;
    NOTED_PORTAL.set(portal as usize);
    INPUTS.with(|inputs| {
        let Ok(mut inputs) = inputs.try_borrow_mut() else { return };
        if new_statement {
            inputs.clear();
        }
        // SAFETY: the active portal is running the call, so it and what it
        // points to are alive.
        unsafe { remember_portal(portal, &mut inputs) };
    });
}

/// Remembers the source text of `portal`, unless it is the statement the
/// client sent (the hook reads that one itself), and its text parameters.
unsafe fn remember_portal(portal: pg_sys::Portal, inputs: &mut Inputs) {
    if portal.is_null() || !inputs.first_visit(portal as usize) {
        return;
    }
    unsafe {
        let source = (*portal).sourceText;
        if !source.is_null() && source != pg_sys::debug_query_string {
            inputs.add(CStr::from_ptr(source).to_bytes());
        }
        // Bind parameter values are not copied here: that would put every
        // value a call is given (a secret, a plaintext) in unwiped memory on
        // each call. The hook reads the unnamed portal's parameters itself,
        // while they still exist; a named portal's are left to `blunt`.
        let params = (*portal).portalParams;
        let client_values = !params.is_null() && (*params).paramFetch.is_none() && (*params).numParams > 0;
        if client_values && source != pg_sys::debug_query_string {
            inputs.incomplete = true;
        }
    }
}

fn carries_text(t: pg_sys::Oid) -> bool {
    [pg_sys::TEXTOID, pg_sys::VARCHAROID, pg_sys::BPCHAROID, pg_sys::JSONOID, pg_sys::XMLOID, pg_sys::BYTEAOID]
        .contains(&t)
}

/// Calls `f` with the bytes of every text-like parameter; false when one
/// could not be read where it is (compressed or stored out of line).
unsafe fn for_each_text_param(params: pg_sys::ParamListInfo, mut f: impl FnMut(&[u8])) -> bool {
    // Parameters fetched on demand are PL/pgSQL variables, not client input.
    if params.is_null() || unsafe { (*params).paramFetch.is_some() } {
        return true;
    }
    let n = unsafe { (*params).numParams };
    if n <= 0 {
        return true;
    }
    let mut complete = true;
    for p in unsafe { (*params).params.as_slice(n as usize) } {
        if p.isnull || !carries_text(p.ptype) {
            continue;
        }
        let v = p.value.cast_mut_ptr::<pg_sys::varlena>();
        if v.is_null() {
            continue;
        }
        unsafe {
            if pgrx::varlena::varatt_is_1b_e(v) || pgrx::varlena::varatt_is_4b_c(v) {
                complete = false;
                continue;
            }
            f(pgrx::varlena::varlena_to_byte_slice(v));
        }
    }
    complete
}

fn noted_this_statement() -> bool {
    // SAFETY: a read of a backend-local global.
    NOTED_AT.get() == unsafe { pg_sys::GetCurrentStatementStartTimestamp() }
}

/// The bytes of a C string, if there is one.
unsafe fn text<'a>(p: *const c_char) -> Option<&'a [u8]> {
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
}

#[pg_guard]
unsafe extern "C-unwind" fn emit_log(edata: *mut pg_sys::ErrorData) {
    if !edata.is_null() && guc::REDACT_SERVER_LOG.get() && !IN_HOOK.get() {
        IN_HOOK.set(true);
        // SAFETY: the error being reported, ours to edit until we return.
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| unsafe { redact_error(&mut *edata) }));
        if done.is_err() {
            // A panic here would become an ERROR inside error reporting.
            // Fail closed instead: what could not be inspected stays out of the log.
            unsafe { (*edata).output_to_server = false };
        }
        IN_HOOK.set(false);
    }
    // A hook installed before ours sees the redacted message.
    unsafe {
        if let Some(prev) = PREV_EMIT_LOG {
            prev(edata);
        }
    }
}

/// Whether a client backend runs queries now: only there do the portal and
/// prepared statement tables exist for sure.
fn in_client_query(query: Option<&[u8]>) -> bool {
    query.is_some() && unsafe { pg_sys::MyBackendType } == pg_sys::BackendType::B_BACKEND
}

/// The text of the prepared statement that an `EXECUTE name` statement runs.
/// Statement logging shows only the EXECUTE (with the prepared text as
/// DETAIL only in the simple protocol), and an error may quote a literal of
/// the prepared text.
unsafe fn prepared_text<'a>(query: Option<&[u8]>) -> Option<&'a [u8]> {
    let name = redact::execute_target(query.filter(|_| in_client_query(query))?)?;
    unsafe {
        // A lookup in this backend's own hash table; it raises nothing when
        // the name is unknown.
        let entry = pg_sys::FetchPreparedStatement(name.as_ptr().cast(), false);
        if entry.is_null() || (*entry).plansource.is_null() {
            return None;
        }
        text((*(*entry).plansource).query_string)
    }
}

/// Whether a statement takes bind parameters (`$1`...).
fn has_placeholders(sql: &[u8]) -> bool {
    sql.windows(2).any(|w| w[0] == b'$' && w[1].is_ascii_digit())
}

fn names_the_vault(sql: &[u8]) -> bool {
    redact::mentions_vault(sql) || redact::mentions_call(sql, SQL_FUNCTIONS)
}

/// Whether a message is about a vault call (see the module comment).
unsafe fn about_the_vault(e: &pg_sys::ErrorData, query: Option<&[u8]>, prepared: Option<&[u8]>) -> bool {
    unsafe {
        text(e.funcname) == Some(b"secret_vault".as_slice())
            || noted_this_statement()
            || query.is_some_and(names_the_vault)
            || prepared.is_some_and(names_the_vault)
            || text(pg_sys::namespace_search_path).is_some_and(redact::mentions_vault)
            || [e.message, e.detail, e.detail_log, e.hint, e.context, e.internalquery]
                .iter()
                .any(|&p| text(p).is_some_and(redact::mentions_vault))
            || text(e.message).is_some_and(|m| redact::mentions_function(m, SQL_FUNCTIONS))
            || [e.detail, e.context, e.internalquery]
                .iter()
                .any(|&p| text(p).is_some_and(|t| redact::mentions_call(t, SQL_FUNCTIONS)))
    }
}

enum Rewrite {
    Keep,
    New(Vec<u8>),
    Fixed(&'static [u8]),
}

fn rewrite(r: redact::Result<Option<Vec<u8>>>, fixed: &'static [u8]) -> Rewrite {
    match r {
        Ok(None) => Rewrite::Keep,
        Ok(Some(v)) => Rewrite::New(v),
        Err(_) => Rewrite::Fixed(fixed),
    }
}

/// `text` without the values; with `blunt`, without anything quoted either.
fn scrub(text: &[u8], values: &mut Scrubber, blunt: bool) -> redact::Result<Option<Vec<u8>>> {
    let mut marks = Marks::new();
    values.mark(text, 0, &mut marks)?;
    if blunt {
        marks.quoted(text, 0)?;
    }
    marks.render(text)
}

/// A DETAIL. One that quotes other processes' statements (a crashed
/// backend's, a deadlock's) has unknown literals: they go wherever they are.
fn redact_detail(
    d: &[u8],
    format: Option<&[u8]>,
    lexing: Lexing,
    values: &mut Scrubber,
    blunt: bool,
) -> redact::Result<Option<Vec<u8>>> {
    if redact::quotes_statements(format, d) {
        redact_sql(d, 0, lexing, values)
    } else {
        scrub(d, values, blunt)
    }
}

/// A text that holds SQL from byte `from` on: its literals in place, a
/// statement too long to lex as a whole, and the values wherever they are.
fn redact_sql(text: &[u8], from: usize, lexing: Lexing, values: &mut Scrubber) -> redact::Result<Option<Vec<u8>>> {
    let mut marks = Marks::new();
    match marks.literals(&text[from..], from, lexing) {
        Err(RedactError::TooLong) => marks.mark_whole(from, text.len())?,
        r => r?,
    }
    values.mark(text, 0, &mut marks)?;
    marks.render(text)
}

/// The message: where it holds the statement (statement logging,
/// auto_explain) that part is redacted like SQL, the rest scrubbed.
fn redact_message(
    m: &[u8],
    query: Option<&[u8]>,
    lexing: Lexing,
    values: &mut Scrubber,
    blunt: bool,
) -> redact::Result<Option<Vec<u8>>> {
    let plan = Marks::is_explain_plan(m);
    let Some((at, q)) = query.filter(|q| !q.is_empty()).and_then(|q| redact::find(m, q).map(|at| (at, q))) else {
        if plan {
            // A plan whose query text is escaped (JSON, XML): quoted runs
            // and parameter lines go wherever they are.
            let mut marks = Marks::new();
            values.mark(m, 0, &mut marks)?;
            marks.explain_plan(m, 0)?;
            return marks.render(m);
        }
        return scrub(m, values, blunt);
    };
    let end = at + q.len();
    let mut marks = Marks::new();
    match marks.literals(q, at, lexing) {
        Err(RedactError::TooLong) => marks.mark_whole(at, end)?,
        r => r?,
    }
    values.mark(&m[..at], 0, &mut marks)?;
    values.mark(&m[end..], end, &mut marks)?;
    if plan {
        marks.explain_plan(&m[end..], end)?;
    }
    marks.render(m)
}

/// A NUL-terminated copy of `bytes` in `cx`, or null.
unsafe fn palloc_text(cx: pg_sys::MemoryContext, bytes: &[u8]) -> *mut c_char {
    if bytes.len() >= MAX_ALLOC || bytes.contains(&0) {
        return std::ptr::null_mut();
    }
    unsafe {
        let cx = if cx.is_null() { pg_sys::CurrentMemoryContext } else { cx };
        let p = pg_sys::MemoryContextAllocExtended(cx, bytes.len() + 1, pg_sys::MCXT_ALLOC_NO_OOM as i32) as *mut u8;
        if p.is_null() {
            return std::ptr::null_mut();
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
        p.cast()
    }
}

/// Puts `r` into `field`, allocated where PostgreSQL keeps the error (it
/// frees the fields after reporting), and frees the old text, which nothing
/// else points to. When even that allocation fails the field is dropped.
unsafe fn replace(cx: pg_sys::MemoryContext, field: &mut *mut c_char, r: &Rewrite) {
    let new: &[u8] = match r {
        Rewrite::Keep => return,
        Rewrite::New(v) => v,
        Rewrite::Fixed(t) => t,
    };
    let old = std::mem::replace(field, unsafe { palloc_text(cx, new) });
    if !old.is_null() {
        unsafe { pg_sys::pfree(old.cast()) };
    }
}

/// Redacts one message in place; see the module comment.
unsafe fn redact_error(e: &mut pg_sys::ErrorData) {
    if AUDIT_LINE.get() {
        // The line itself is written as built; what PostgreSQL attaches
        // (the statement, a CONTEXT quoting bind parameters) is not.
        e.hide_stmt = true;
        e.context = std::ptr::null_mut();
        return;
    }
    let query = unsafe { text(pg_sys::debug_query_string) };
    let prepared = unsafe { prepared_text(query) };
    if !unsafe { about_the_vault(e, query, prepared) } {
        return;
    }
    e.hide_stmt = true;

    let scs = unsafe { pg_sys::standard_conforming_strings };
    let sql = Lexing::sql(scs);
    let format = unsafe { text(e.message_id) };
    let statement_log = format.is_some_and(redact::is_statement_log);
    let (message, detail, detail_log, hint, context, internal) = unsafe {
        (text(e.message), text(e.detail), text(e.detail_log), text(e.hint), text(e.context), text(e.internalquery))
    };

    // The values the call was given, as far as they can be learned. Where
    // they cannot, `blunt` redacts every quoted span of a message instead.
    let mut values = Scrubber::new();
    let mut blunt = false;
    for q in [query, prepared, internal].into_iter().flatten() {
        blunt |= values.add_sql(q, sql).is_err();
    }
    if let Some(c) = context {
        blunt |= values.add_sql(c, Lexing::quoting(scs)).is_err();
        // A bind parameter its type rejected: the message quotes it, and
        // the value is nowhere else.
        blunt |= redact::find(c, b"parameter $").is_some();
    }
    if let Some(p) = detail.filter(|_| statement_log).and_then(|d| d.strip_prefix(b"prepare: ")) {
        blunt |= values.add_sql(p, sql).is_err();
    }
    if noted_this_statement() {
        INPUTS.with(|inputs| match inputs.try_borrow() {
            Ok(inputs) => {
                blunt |= inputs.incomplete;
                for &(s, end) in &inputs.items {
                    blunt |= values.add_sql(&inputs.bytes[s..end], sql).is_err();
                }
            }
            Err(_) => blunt = true,
        });
    }
    // Drivers bind parameters to the unnamed portal. It outlives this
    // report: portals are cleaned up after it.
    if in_client_query(query) {
        let portal = unsafe { pg_sys::GetPortalByName(c"".as_ptr()) };
        let params = if portal.is_null() { std::ptr::null_mut() } else { unsafe { (*portal).portalParams } };
        if !params.is_null() {
            let complete = unsafe { for_each_text_param(params, |v| blunt |= values.add_value(v).is_err()) };
            blunt |= !complete;
        } else if query.is_some_and(has_placeholders) {
            // An error while binding (a parameter its type rejects, found
            // when the plan folds it in): the values are not attached to
            // the portal yet, and the message may quote one.
            blunt = true;
        }
    }

    // Every rewrite is computed before any field is replaced: replacing
    // frees the texts read above.
    // The extension's own errors name only objects that exist (a name that
    // matches nothing is not repeated, see src/error.rs) and never a value:
    // their message and hint reach the client as written.
    let ours = unsafe { text(e.funcname) } == Some(b"secret_vault".as_slice());
    let message = message.filter(|_| !ours).map_or(Rewrite::Keep, |m| {
        // Statement logging's message is the statement; it quotes nothing else.
        rewrite(redact_message(m, query, sql, &mut values, blunt && !statement_log), FIXED_MESSAGE)
    });
    let detail = detail.map_or(Rewrite::Keep, |d| {
        // Statement logging's DETAIL is the bound parameters ("parameters: "
        // up to 15, "Parameters: " from 16 on, translated under lc_messages)
        // or a prepared statement's text ("prepare: "): anything but the
        // latter goes whole, whatever the language.
        if statement_log && d.starts_with(b"prepare: ") {
            rewrite(redact_sql(d, b"prepare: ".len(), sql, &mut values), FIXED_DETAIL)
        } else if statement_log {
            Rewrite::Fixed(FIXED_PARAMETERS)
        } else {
            rewrite(redact_detail(d, format, sql, &mut values, blunt), FIXED_DETAIL)
        }
    });
    let detail_log =
        detail_log.map_or(Rewrite::Keep, |d| rewrite(redact_detail(d, format, sql, &mut values, blunt), FIXED_DETAIL));
    let hint = hint.filter(|_| !ours).map_or(Rewrite::Keep, |h| rewrite(scrub(h, &mut values, blunt), FIXED_HINT));
    let context = context.map_or(Rewrite::Keep, |c| {
        let redacted = (|| {
            let mut marks = Marks::new();
            // CONTEXT quotes SQL in double quotes (`SQL statement "..."`)
            // and parameters in single ones: every literal goes, in place.
            marks.literals(c, 0, Lexing::quoting(scs))?;
            marks.echoed_inputs(c, 0)?;
            values.mark(c, 0, &mut marks)?;
            marks.render(c)
        })();
        rewrite(redacted, FIXED_CONTEXT)
    });
    let internal = internal.map_or(Rewrite::Keep, |q| rewrite(redact_sql(q, 0, sql, &mut values), FIXED_QUERY));

    let cx = e.assoc_context;
    unsafe {
        replace(cx, &mut e.message, &message);
        replace(cx, &mut e.detail, &detail);
        replace(cx, &mut e.detail_log, &detail_log);
        replace(cx, &mut e.hint, &hint);
        replace(cx, &mut e.context, &context);
        replace(cx, &mut e.internalquery, &internal);
    }
}
