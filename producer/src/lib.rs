//! m365-producer.
