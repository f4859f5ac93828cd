//! Android only: what the platform needs before the first https request.
//!
//! reqwest verifies the relay's certificate with `rustls-platform-verifier`,
//! which on Android asks the system's trust manager through JNI and so needs
//! the app's `Context` once per process. The app calls
//! `app.handoff.android.PlatformTls.init(context)` from
//! `Application.onCreate`, before any store is opened. Not through uniffi:
//! the verifier wants the JNI environment and a `Context`, which JNA cannot
//! hand over.

use jni::errors::ThrowRuntimeExAndDefault;
use jni::objects::{JClass, JObject};
use jni::EnvUnowned;

/// `PlatformTls.init(context)`. A second call is a no-op; a JNI failure is
/// thrown to the caller as a `RuntimeException`, and a panic does not cross
/// into the JVM (`with_env` catches it).
#[allow(unsafe_code)] // `no_mangle`: the JVM finds native methods by symbol name.
#[no_mangle]
pub extern "system" fn Java_app_handoff_android_PlatformTls_init<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    context: JObject<'caller>,
) {
    env.with_env(|env| rustls_platform_verifier::android::init_with_env(env, context))
        .resolve::<ThrowRuntimeExAndDefault>()
}
