//! The pure core: decoding, filtering and formatting of records. It knows nothing of eBPF,
//! terminals or files, so `trace` and (later) `report` share it and it is tested without root.

pub mod aggregate;
pub mod alert_catalogue;
pub mod alert_history;
pub mod clock;
pub mod conntrack;
pub mod coverage;
pub mod decode;
pub mod early_ends;
pub mod event;
pub mod fasthash;
pub mod filter;
pub mod json;
pub mod plain;
pub mod record;
pub mod replay;
pub mod requests;
pub mod sharded;
pub mod signals;
pub mod snapshot;
pub mod text;
