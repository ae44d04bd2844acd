//! Envoy-format access logs.
//!
//! A format string (Istio's default TEXT format, a custom one, or a JSON map of them) is compiled
//! once into tokens; each request or connection fills an [`AccessRecord`] and exactly one line is
//! written when it completes (or is abandoned: the record is finished by a drop guard in
//! `proxy/finish.rs`). Lines go through a bounded queue to a writer thread, so a slow disk or a full
//! pipe never stalls requests: when the queue is full the line is dropped and counted.
//!
//! | file | what |
//! |---|---|
//! | `format.rs` | compiling a format (operators, arguments, header slots) |
//! | `record.rs` | [`AccessRecord`], [`ConnTls`]: what a line is made of |
//! | `write.rs` | writing one line, as text or JSON |
//! | `json.rs` | reading a JSON format map |
//! | `sink.rs` | [`AccessLog`]: the buffer and the writer thread |

mod format;
mod json;
mod record;
mod sink;
mod write;

#[cfg(test)]
mod tests;

pub use format::{Encoding, ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT, LogFormat, Template};
pub use record::{AccessRecord, ConnTls};
pub use sink::{AccessLog, FLUSH_INTERVAL, QUEUE_BYTES, Sink};
