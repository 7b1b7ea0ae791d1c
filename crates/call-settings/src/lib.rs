//! The settings a call is transcribed with, pure (no I/O): typed reads of a function's
//! environment ([`Settings`], [`ConfigError`]), one call's Transcribe settings and the API
//! references' rules on them ([`CallSettings`]), and the contact attributes a Connect flow
//! may override them with ([`ContactPolicy`]). StartLCA and the transcriber share it, so a
//! contact StartLCA accepts is one the transcriber can transcribe.

pub mod contact;
pub mod settings;
pub mod transcribe;

pub use contact::{AttributeError, ContactChoice, ContactPolicy, ContactSettings};
pub use settings::{ConfigError, Settings};
pub use transcribe::{
    ApiMode, CallSettings, Language, LanguageIdentification, PostCallAnalytics, Redaction,
    VocabularyFilter,
};
