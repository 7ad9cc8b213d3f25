//! Behaviour and conformance tests of the Graph emulator, over real HTTP on loopback.

mod conformance;
mod devportal;
mod graph;
mod helpers;
mod identity;
mod notifications;
mod throttling;
