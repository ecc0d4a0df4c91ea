//! A delivery receipt: how a source learns that the agent is done with one of its
//! messages, without the data path knowing what the source is (an MQTT broker's copy,
//! a queue's lease, a test's probe).

/// Settled exactly once: when dropped, the message counts as handled (its results are
/// delivered or safe on disk, or it failed for good); [`Receipt::forget`] leaves it
/// unhandled, for its source to deliver again.
pub struct Receipt {
    settle: Option<Box<dyn FnOnce(Settled) + Send>>,
}

/// How a [`Receipt`] was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Done with: the source may forget the message.
    Handled,
    /// Not handled (the agent stopped first): the source should deliver it again.
    Forgotten,
}

impl Receipt {
    /// A receipt that calls `settle` once, with how it was settled.
    pub fn new(settle: impl FnOnce(Settled) + Send + 'static) -> Receipt {
        Receipt { settle: Some(Box::new(settle)) }
    }

    /// Settles the receipt as not handled.
    pub fn forget(mut self) {
        if let Some(settle) = self.settle.take() {
            settle(Settled::Forgotten);
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle(Settled::Handled);
        }
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receipt")
    }
}
