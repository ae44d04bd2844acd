//! Lowering: the declarations of every front end ([`Model`](crate::config::decl::Model)) into
//! one `Config`, checking everything that needs the whole picture (a host and port declared
//! twice, two listeners on one address, routes to undeclared ports).
//!
//! [`build`] runs the phases in order: the global settings, the [`clusters`] (with their
//! [`tls`] policies), then the [`listeners`].

pub(crate) mod build;
pub(crate) mod capture;
pub(crate) mod clusters;
pub(crate) mod listeners;
pub(crate) mod tls;
