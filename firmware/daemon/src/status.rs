//! The status light: one GPIO output that pulses when a frame is kept and stays lit while the
//! uplink is unhealthy (a kept frame then blinks it dark), so a person at the camera sees both.
//!
//! Written against `embedded-hal`'s [`OutputPin`]; on Linux the pin is a line of a GPIO
//! character device (`/dev/gpiochipN`). Without a configured line qualmd runs without a light.
//! The light is a state machine ticked from the service loop: it never sleeps and writes the
//! pin only when its level changes, so it cannot hold up a frame.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use embedded_hal::digital::OutputPin;
use linux_embedded_hal::CdevPin;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use serde::Deserialize;

/// Whether the uplink is healthy: the uplink stores `false` while it cannot deliver, the status
/// light reads it. Until an uplink exists nothing stores to it and it stays `true`.
pub type UplinkHealth = Arc<AtomicBool>;

/// The `[device] status_gpio` table: which GPIO line drives the light.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StatusGpioConfig {
    /// GPIO character device, e.g. `/dev/gpiochip0` (`/dev/gpiochip4` on a Pi 5).
    pub chip: PathBuf,
    /// Line offset on that chip (the BCM number on a Raspberry Pi).
    pub line: u32,
    /// How long a kept frame changes the light, in milliseconds (default 150).
    #[serde(default = "default_pulse_ms")]
    pub pulse_ms: u64,
}

fn default_pulse_ms() -> u64 {
    150
}

/// What the service loop tells the light.
pub trait StatusIndicator {
    /// A frame was kept at `now`.
    fn frame_kept(&mut self, now: Instant);
    /// Time passed: end a pulse, follow the uplink's health.
    fn tick(&mut self, now: Instant);
}

/// A status light on any output pin.
#[derive(Debug)]
pub struct StatusLight<P: OutputPin> {
    pin: P,
    uplink: UplinkHealth,
    pulse: Duration,
    pulse_until: Option<Instant>,
    /// What the pin was last driven to; `None` before the first write.
    lit: Option<bool>,
    /// Whether a pin error was logged already (a broken pin must not flood the log).
    warned: bool,
}

impl<P: OutputPin> StatusLight<P> {
    /// A light on `pin`, untouched until the first [`StatusIndicator::tick`]. A kept frame
    /// inside a running pulse extends it rather than starting a second one.
    pub fn new(pin: P, uplink: UplinkHealth, pulse: Duration) -> Self {
        Self { pin, uplink, pulse, pulse_until: None, lit: None, warned: false }
    }

    /// Drives the pin to what the state asks for; writes only on a change.
    fn update(&mut self, now: Instant) {
        let pulsing = self.pulse_until.is_some_and(|until| now < until);
        let uplink_down = !self.uplink.load(Ordering::Relaxed);
        // Down: steady light that a pulse blinks dark. Up: dark that a pulse lights.
        let lit = uplink_down != pulsing;
        if self.lit == Some(lit) {
            return;
        }
        let written = if lit { self.pin.set_high() } else { self.pin.set_low() };
        match written {
            Ok(()) => self.lit = Some(lit),
            Err(error) if !self.warned => {
                self.warned = true;
                tracing::warn!("cannot drive the status light: {error:?}");
            }
            Err(_) => {}
        }
    }
}

impl<P: OutputPin> StatusIndicator for StatusLight<P> {
    fn frame_kept(&mut self, now: Instant) {
        self.pulse_until = Some(now + self.pulse);
        self.update(now);
    }

    fn tick(&mut self, now: Instant) {
        self.update(now);
    }
}

/// Opens the configured GPIO line as an output, initially low.
///
/// # Errors
/// When the chip cannot be opened or the line is missing or taken; the message names the chip.
pub fn open_gpio(config: &StatusGpioConfig) -> anyhow::Result<CdevPin> {
    let chip = config.chip.display();
    let line = config.line;
    let mut device = Chip::new(&config.chip).with_context(|| {
        format!("[device] status_gpio: cannot open {chip}: expected a GPIO character device")
    })?;
    let handle = device
        .get_line(line)
        .with_context(|| format!("[device] status_gpio: {chip} has no line {line}"))?
        .request(LineRequestFlags::OUTPUT, 0, "qualmd-status")
        .with_context(|| format!("[device] status_gpio: cannot take line {line} of {chip}"))?;
    CdevPin::new(handle)
        .with_context(|| format!("[device] status_gpio: cannot use line {line} of {chip}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    fn light(expected: &[Transaction], healthy: bool) -> (StatusLight<Mock>, Mock, UplinkHealth) {
        let pin = Mock::new(expected);
        let uplink = Arc::new(AtomicBool::new(healthy));
        let light = StatusLight::new(pin.clone(), Arc::clone(&uplink), Duration::from_millis(100));
        (light, pin, uplink)
    }

    fn ms(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    /// What happens at a moment, in milliseconds from the start, and whether the light is lit
    /// right after it.
    enum Step {
        Kept(u64, bool),
        Tick(u64, bool),
    }

    /// Runs `steps` on a healthy uplink: the pin must go low, high, low (one pulse), and the
    /// light must be lit exactly where the steps say.
    fn assert_one_pulse(steps: &[Step]) {
        let low = Transaction::set(State::Low);
        let expected = [low.clone(), Transaction::set(State::High), low];
        let (mut light, mut pin, _) = light(&expected, true);
        let start = Instant::now();
        light.tick(start);
        for step in steps {
            let (millis, lit) = match *step {
                Step::Kept(millis, lit) => {
                    light.frame_kept(ms(start, millis));
                    (millis, lit)
                }
                Step::Tick(millis, lit) => {
                    light.tick(ms(start, millis));
                    (millis, lit)
                }
            };
            assert_eq!(light.lit, Some(lit), "at {millis} ms");
        }
        pin.done();
    }

    #[test]
    fn one_kept_frame_pulses_the_light_once() {
        // The pulse ends exactly at 10 + 100 ms.
        use Step::{Kept, Tick};
        assert_one_pulse(&[
            Kept(10, true),
            Tick(50, true),
            Tick(109, true),
            Tick(110, false),
            Tick(500, false),
        ]);
    }

    #[test]
    fn two_kept_frames_in_quick_succession_make_one_longer_pulse() {
        // The first pulse would have ended at 110 ms; the second holds the light to 160 ms.
        use Step::{Kept, Tick};
        assert_one_pulse(&[
            Kept(10, true),
            Tick(40, true),
            Kept(60, true),
            Tick(110, true),
            Tick(159, true),
            Tick(160, false),
        ]);
    }

    #[test]
    fn uplink_going_down_lights_it_steadily_and_up_again_darkens_it() {
        let low = Transaction::set(State::Low);
        let high = Transaction::set(State::High);
        let expected = [low.clone(), high.clone(), low.clone(), high, low];
        let (mut light, mut pin, uplink) = light(&expected, true);
        let start = Instant::now();
        light.tick(start);

        // Down: lit on the next tick and steady while it stays down.
        uplink.store(false, Ordering::Relaxed);
        light.tick(ms(start, 200));
        light.tick(ms(start, 1000));

        // A kept frame while down blinks the light dark for one pulse.
        light.frame_kept(ms(start, 2000));
        light.tick(ms(start, 2100));

        // Up again: dark, and it stays dark.
        uplink.store(true, Ordering::Relaxed);
        light.tick(ms(start, 3000));
        light.tick(ms(start, 4000));
        pin.done();
    }

    #[test]
    fn a_missing_chip_is_one_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let chip = dir.path().join("gpiochip9");
        let config = StatusGpioConfig { chip: chip.clone(), line: 17, pulse_ms: 150 };
        let Err(error) = open_gpio(&config) else { panic!("{} opened", chip.display()) };
        let message = format!("{error:#}");
        assert!(message.contains(&format!("cannot open {}", chip.display())), "{message}");
    }

    #[test]
    fn the_config_table_parses_with_a_default_pulse() {
        let config: StatusGpioConfig =
            toml::from_str("chip = \"/dev/gpiochip0\"\nline = 17").unwrap();
        let expected = StatusGpioConfig { chip: "/dev/gpiochip0".into(), line: 17, pulse_ms: 150 };
        assert_eq!(config, expected);
        assert!(toml::from_str::<StatusGpioConfig>("chip = \"x\"\nline = 1\nfoo = 2").is_err());
    }
}
