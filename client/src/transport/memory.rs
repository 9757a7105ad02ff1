//! A transport made of channels, for unit tests of the driver (tests play the server).

use bytes::Bytes;
use haberci_wire::ServerFrame;
use tokio::sync::mpsc;

use crate::error::Disconnect;

pub(crate) struct Sink(pub(crate) mpsc::UnboundedSender<Bytes>);
pub(crate) struct Stream(pub(crate) mpsc::UnboundedReceiver<Result<ServerFrame, Disconnect>>);

impl Sink {
    pub(crate) fn send_body(&mut self, body: Bytes) -> Result<(), Disconnect> {
        self.0
            .send(body)
            .map_err(|_| Disconnect::Transport("the test server is gone".into()))
    }
}

impl Stream {
    pub(crate) async fn recv_frame(&mut self) -> Result<ServerFrame, Disconnect> {
        match self.0.recv().await {
            Some(result) => result,
            None => Err(Disconnect::Transport("the test server is gone".into())),
        }
    }
}
