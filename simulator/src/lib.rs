//! m365-sim: a faithful fake Microsoft 365 tenant and a fake Devo.
