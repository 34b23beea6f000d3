//! Server hooks that keep shared state tied to the catalog:
//!
//! - DROP EXTENSION and DROP DATABASE wipe (zero) their cache slots, when the
//!   drop begins and again when it commits (a refill in between is caught);
//! - DROP DATABASE, ALTER DATABASE ... RENAME and CREATE DATABASE ...
//!   TEMPLATE first stop that database's worker, since PostgreSQL refuses
//!   them while any other session is connected;
//! - a committed CREATE/ALTER EXTENSION secret_vault wakes the launcher, so
//!   the database gets its worker at once.

use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::{register_xact_callback, PgList, PgXactCallbackEvent};

use crate::worker::registry;
use crate::{coherence, identity, shmem};

static mut PREV_OBJECT_ACCESS: pg_sys::object_access_hook_type = None;
static mut PREV_UTILITY: pg_sys::ProcessUtility_hook_type = None;

const EXTENSION: &CStr = c"secret_vault";
/// How long a database's worker stays stopped for a database command.
const SUSPEND_MICROS: i64 = 15_000_000;

pub fn init() {
    unsafe {
        PREV_OBJECT_ACCESS = pg_sys::object_access_hook;
        pg_sys::object_access_hook = Some(object_access);
        PREV_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(utility);
    }
}

fn is_ours(extension: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup by OID; NULL when there is no such extension.
    let name = unsafe { pg_sys::get_extension_name(extension) };
    !name.is_null() && unsafe { CStr::from_ptr(name) } == EXTENSION
}

#[pg_guard]
unsafe extern "C-unwind" fn object_access(
    access: pg_sys::ObjectAccessType::Type,
    class_id: pg_sys::Oid,
    object_id: pg_sys::Oid,
    sub_id: i32,
    arg: *mut std::ffi::c_void,
) {
    unsafe {
        if let Some(prev) = PREV_OBJECT_ACCESS {
            prev(access, class_id, object_id, sub_id, arg);
        }
    }
    if access != pg_sys::ObjectAccessType::OAT_DROP {
        return;
    }
    if class_id == pg_sys::ExtensionRelationId && is_ours(object_id) {
        let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
        shmem::with_exclusive(|c| c.purge(db, Some(object_id.to_u32())));
        coherence::note_purge(db, object_id.to_u32());
        identity::reset();
    } else if class_id == pg_sys::DatabaseRelationId {
        shmem::with_exclusive(|c| c.purge(object_id.to_u32(), None));
    }
}

/// The database a statement needs to be alone in, if any.
unsafe fn database_needing_exclusive_access(node: *mut pg_sys::Node) -> Option<String> {
    unsafe {
        let cstr = |p: *const std::ffi::c_char| (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned());
        match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => cstr((*(node as *mut pg_sys::DropdbStmt)).dbname),
            pg_sys::NodeTag::T_RenameStmt => {
                let stmt = node as *mut pg_sys::RenameStmt;
                ((*stmt).renameType == pg_sys::ObjectType::OBJECT_DATABASE).then(|| cstr((*stmt).subname)).flatten()
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let options = PgList::<pg_sys::DefElem>::from_pg((*(node as *mut pg_sys::CreatedbStmt)).options);
                option(&options, c"template").and_then(cstr)
            }
            // ALTER DATABASE ... SET TABLESPACE moves the files: it wants the database to itself.
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let stmt = node as *mut pg_sys::AlterDatabaseStmt;
                let options = PgList::<pg_sys::DefElem>::from_pg((*stmt).options);
                option(&options, c"tablespace").and_then(|_| cstr((*stmt).dbname))
            }
            _ => None,
        }
    }
}

/// The string value of option `name`, if given with one (`TEMPLATE DEFAULT` has none).
unsafe fn option(options: &PgList<pg_sys::DefElem>, name: &CStr) -> Option<*const std::ffi::c_char> {
    unsafe {
        let d = options.iter_ptr().find(|d| !(**d).defname.is_null() && CStr::from_ptr((**d).defname) == name)?;
        if (*d).arg.is_null() {
            return None;
        }
        Some(pg_sys::defGetString(d) as *const std::ffi::c_char)
    }
}

unsafe fn creates_or_updates_us(node: *mut pg_sys::Node) -> bool {
    unsafe {
        let name = match (*node).type_ {
            pg_sys::NodeTag::T_CreateExtensionStmt => (*(node as *mut pg_sys::CreateExtensionStmt)).extname,
            pg_sys::NodeTag::T_AlterExtensionStmt => (*(node as *mut pg_sys::AlterExtensionStmt)).extname,
            _ => return false,
        };
        !name.is_null() && CStr::from_ptr(name) == EXTENSION
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    unsafe {
        let node = (*pstmt).utilityStmt;
        if !node.is_null() {
            if let Some(name) = database_needing_exclusive_access(node) {
                let c = std::ffi::CString::new(name).unwrap_or_default();
                let oid = pg_sys::get_database_oid(c.as_ptr(), true);
                // Only for someone PostgreSQL will let run the command: anyone
                // else could keep a database's worker stopped by retrying it.
                // A standby refuses these commands anyway.
                let may = !pg_sys::RecoveryInProgress()
                    && (pg_sys::superuser() || owns_database(oid));
                if oid != pg_sys::InvalidOid && may {
                    registry::suspend(oid.to_u32(), SUSPEND_MICROS, std::time::Duration::from_secs(10));
                }
            } else if creates_or_updates_us(node) {
                let db = pg_sys::MyDatabaseId.to_u32();
                register_xact_callback(PgXactCallbackEvent::Commit, move || registry::want(db));
            }
        }
        match PREV_UTILITY {
            Some(prev) => prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
            None => pg_sys::standard_ProcessUtility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
        }
    }
}

/// Whether the current user owns database `oid` (PostgreSQL 16 folded the
/// per-kind owner checks into one).
unsafe fn owns_database(oid: pg_sys::Oid) -> bool {
    #[cfg(feature = "pg15")]
    unsafe {
        pg_sys::pg_database_ownercheck(oid, pg_sys::GetUserId())
    }
    #[cfg(not(feature = "pg15"))]
    unsafe {
        pg_sys::object_ownercheck(pg_sys::DatabaseRelationId, oid, pg_sys::GetUserId())
    }
}
