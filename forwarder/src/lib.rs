//! m365-forwarder.
