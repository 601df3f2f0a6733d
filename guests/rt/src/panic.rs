//! Panics end the guest: print `<PREFIX> FAIL: panic: ...` and power off (no RESULT line).

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    // A panic while printing the panic: just stop.
    if !PANICKING.load(Ordering::SeqCst) {
        PANICKING.store(true, Ordering::SeqCst);
        crate::println!("{} FAIL: panic: {info}", crate::report::prefix());
    }
    crate::smccc::psci::system_off()
}
