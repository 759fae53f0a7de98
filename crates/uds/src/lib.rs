//! gRPC over unix sockets, the way kubelet and Go peers dial them.
//!
//! Every socket the node agent serves (CSI, kubelet plugin registration, the provider API) is
//! created by [`bind`] and accepted through [`incoming`]:
//!
//! - [`bind`]: mode 0600 from the first moment, a stale socket replaced, anything else refused.
//! - [`incoming`]: each connection's HTTP/2 request headers pass through [`AuthorityFixup`],
//!   which serves a client that sends the socket path as `:authority` (kubelet's plugin
//!   registration client does) instead of letting the HTTP/2 layer reset its streams.

mod authority;
mod bind;
mod stream;

pub use authority::{AuthorityFixup, FixupError, LOCAL_AUTHORITY, MAX_HEADER_BLOCK};
pub use bind::{BindError, bind};
pub use stream::{UdsStream, incoming};
