//! sleep-dashboard: receives Asleep's sleep-tracking webhooks, stores them,
//! streams each user's growing hypnogram to the browsers watching, and serves
//! the final report.
//!
//! The data path reads top to bottom through the modules: [`webhook`] intake
//! → [`payload`] validation → [`storage`] commit → [`timeline`] assembly in
//! the user's [`rooms`] → [`ws`] broadcast; [`pages`] render what is stored.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod health;
pub mod hypnogram;
pub mod metrics;
pub mod pages;
pub mod payload;
pub mod protocol;
pub mod report;
pub mod rooms;
pub mod send;
pub mod signal;
pub mod statistics;
pub mod storage;
pub mod timeline;
pub mod trends;
pub mod warnings;
pub mod webhook;
pub mod ws;
