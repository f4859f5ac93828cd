package app.handoff.android

import android.content.Context

/**
 * Gives the core's TLS verifier (rustls-platform-verifier, which asks
 * Android's trust manager about the relay's certificate) the app's
 * [Context]. Call [init] once per process before the first sync; a second
 * call does nothing. The native half is `bindings/src/android.rs`.
 */
object PlatformTls {
    init {
        // The same libhandoff_ffi.so that JNA loads for the bindings: one
        // library in the process, so one verifier.
        System.loadLibrary("handoff_ffi")
    }

    @JvmStatic
    external fun init(context: Context)
}
