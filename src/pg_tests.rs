//! In-process tests: run inside a real PostgreSQL backend by `cargo pgrx test`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn scalar<T: pgrx::FromDatum + pgrx::IntoDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql).expect("query").expect("non-null")
    }

    #[pg_test]
    fn export_group_current_is_version_one_with_requested_length() {
        Spi::run("SELECT vault.create_group('t_export', key_bytes => 48)").unwrap();
        assert_eq!(scalar::<i32>("SELECT version FROM vault.current('t_export')"), 1);
        assert_eq!(scalar::<i32>("SELECT length(key) FROM vault.current('t_export')"), 48);
    }

    #[pg_test]
    fn rotation_is_pending_until_propagation_delay_then_resolvable() {
        Spi::run("SELECT vault.create_group('t_rot', propagation_delay => '1 hour')").unwrap();
        assert_eq!(scalar::<i32>("SELECT vault.rotate('t_rot')"), 2);
        assert_eq!(scalar::<i32>("SELECT version FROM vault.current('t_rot')"), 1);
        assert_eq!(scalar::<i32>("SELECT length(vault.resolve('t_rot', 2))"), 32);
        assert!(scalar::<bool>("SELECT vault.resolve('t_rot', 1) <> vault.resolve('t_rot', 2)"));
    }

    #[pg_test]
    fn encrypt_decrypt_round_trip_survives_rotation() {
        Spi::run("SELECT vault.create_group('t_enc', 'encrypt', propagation_delay => '0')").unwrap();
        Spi::run("CREATE TEMP TABLE c AS SELECT vault.encrypt('t_enc', 'hello', 'ctx') AS ct").unwrap();
        Spi::run("SELECT vault.rotate('t_enc')").unwrap();
        assert_eq!(
            scalar::<Vec<u8>>("SELECT vault.decrypt('t_enc', ct, 'ctx') FROM c"),
            b"hello".to_vec()
        );
    }

    #[pg_test(error = "ciphertext failed authentication: wrong key group, version or context, or the data was altered")]
    fn decrypt_with_other_context_fails() {
        Spi::run("SELECT vault.create_group('t_ctx', 'encrypt')").unwrap();
        Spi::run("SELECT vault.decrypt('t_ctx', vault.encrypt('t_ctx', 'x', 'a'), 'b')").unwrap();
    }

    #[pg_test(error = "vault.current is not allowed on key group \"t_purpose\" (purpose 'encrypt')")]
    fn encrypt_group_refuses_current() {
        Spi::run("SELECT vault.create_group('t_purpose', 'encrypt')").unwrap();
        Spi::run("SELECT vault.current('t_purpose')").unwrap();
    }

    #[pg_test]
    fn no_table_row_holds_an_unwrapped_key() {
        Spi::run("SELECT vault.create_group('t_wrap')").unwrap();
        // The exported key must not appear inside any stored wrapped blob.
        assert!(!scalar::<bool>(
            "SELECT bool_or(position(c.key IN r.wrapped_key) > 0)
               FROM vault.current('t_wrap') c, vault.ring_keys r"
        ));
    }
}
