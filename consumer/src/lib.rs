//! m365-consumer.
