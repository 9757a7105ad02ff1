//! Accounts: who a user is. [`names`] holds the types that can only be valid (usernames,
//! emails, passwords, profile fields, the refresh-token family id; users and sessions are
//! `haberci_wire::UserId` and `SessionId`); [`store`] reads and writes the `users` and
//! `credentials` tables; [`cache`] keeps profiles in Redis for `GET /v1/users/{username}`.

pub mod cache;
pub mod names;
pub mod store;

pub use names::{
    AvatarRef, Bio, DisplayName, Email, FamilyId, Invalid, LoginName, Password, Username,
};
