//! Direct channels between two friends' devices: not built yet (the hooks the client calls are
//! empty; every message goes through the server).

use tokio::sync::mpsc;

use crate::cache::Cache;
use crate::client::Client;
use crate::core::Input;
use crate::options::Options;
use crate::types::Event;

/// The direct channels of one device.
pub struct Direct {}

impl Direct {
    pub(crate) fn new(
        _opts: &Options,
        _cache: Cache,
        _input: mpsc::UnboundedSender<Input>,
        _events: mpsc::UnboundedSender<Event>,
    ) -> Direct {
        Direct {}
    }

    pub(crate) fn attach(&self, _client: &Client) {}

    pub(crate) fn close_all(&self) {}
}
