//! Access rules: privileges granted to roles on name patterns, client
//! address allowlists and brute-force lockout. Pure logic; the pgrx layer
//! resolves roles and addresses and keeps the lockout table in shared memory.

pub mod address;
pub mod glob;
pub mod lockout;

use crate::PolicyError;

/// What a rule allows on the names its pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// `vault.current`, `vault.resolve`, `vault.read_secret`, rows of
    /// `vault.decrypted_secrets`, `vault.credential`.
    Read,
    /// `vault.verify_secret`.
    Verify,
    /// `vault.encrypt`, and sealing a secret under a named key group.
    Encrypt,
    /// `vault.decrypt`.
    Decrypt,
    /// Create, update, delete, retire, destroy.
    Write,
    /// `vault.rotate`, `vault.rotate_secret`.
    Rotate,
}

pub const ALL: [Privilege; 6] =
    [Privilege::Read, Privilege::Verify, Privilege::Encrypt, Privilege::Decrypt, Privilege::Write, Privilege::Rotate];

impl Privilege {
    pub fn parse(s: &str) -> Result<Privilege, PolicyError> {
        Ok(match s {
            "read" => Privilege::Read,
            "verify" => Privilege::Verify,
            "encrypt" => Privilege::Encrypt,
            "decrypt" => Privilege::Decrypt,
            "write" => Privilege::Write,
            "rotate" => Privilege::Rotate,
            _ => {
                return Err(PolicyError::Invalid(
                    "unknown privilege; use read, verify, encrypt, decrypt, write or rotate".into(),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Privilege::Read => "read",
            Privilege::Verify => "verify",
            Privilege::Encrypt => "encrypt",
            Privilege::Decrypt => "decrypt",
            Privilege::Write => "write",
            Privilege::Rotate => "rotate",
        }
    }

    /// This privilege's bit in a `Privileges` set.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of privileges as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Privileges(pub u8);

impl Privileges {
    pub fn has(self, p: Privilege) -> bool {
        self.0 & p.bit() != 0
    }
    pub fn any(self) -> bool {
        self.0 != 0
    }
    pub fn add(&mut self, p: Privilege) {
        self.0 |= p.bit();
    }
}

/// One rule as the evaluator sees it: the privileges a role holds on the
/// names its pattern matches, and whether that role may use them from the
/// caller's address (`usable`, decided by the caller against the role's
/// allowlist).
pub struct Rule<'a> {
    pub privileges: Privileges,
    pub pattern: &'a glob::Pattern,
    pub usable: bool,
}

/// The privileges `rules` give on `name`: the union over every rule that
/// applies to the caller (the caller passes only those), matches the name
/// and may be used from the caller's address.
pub fn privileges_on<'a>(rules: impl IntoIterator<Item = Rule<'a>>, name: &str) -> Privileges {
    let mut out = Privileges::default();
    for r in rules {
        if r.usable && (out.0 | r.privileges.0) != out.0 && r.pattern.matches(name) {
            out.0 |= r.privileges.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_parse_and_print_round_trip() {
        for p in ALL {
            assert_eq!(Privilege::parse(p.as_str()).unwrap(), p);
        }
        assert!(Privilege::parse("READ").is_err());
        assert!(Privilege::parse("all").is_err());
    }

    #[test]
    fn a_rule_from_a_role_limited_elsewhere_gives_nothing() {
        let stripe = glob::Pattern::parse("stripe/*").unwrap();
        let all = glob::Pattern::parse("**").unwrap();
        let mut read = Privileges::default();
        read.add(Privilege::Read);
        let mut write = Privileges::default();
        write.add(Privilege::Write);
        let got = privileges_on(
            [
                Rule { privileges: read, pattern: &stripe, usable: true },
                Rule { privileges: write, pattern: &all, usable: false },
            ],
            "stripe/key",
        );
        assert!(got.has(Privilege::Read));
        assert!(!got.has(Privilege::Write));
        assert!(!privileges_on([Rule { privileges: read, pattern: &stripe, usable: true }], "github/key").any());
    }
}
