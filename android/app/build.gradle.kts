// The Compose app. Its native library comes from cargo-ndk (see README.md):
// `cargo ndk -t arm64-v8a -t armeabi-v7a -t x86_64 -o android/app/src/main/jniLibs build --release -p handoff-ffi`
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.application")
    kotlin("android")
    kotlin("plugin.compose")
}

android {
    namespace = "app.handoff.android"
    compileSdk = 35

    defaultConfig {
        applicationId = "app.handoff.android"
        // Android 8.0: AndroidKeyStore AES-GCM keys, java.time, WorkManager.
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
    }

    buildFeatures { compose = true }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

// `android { kotlinOptions {} }` is an error since Kotlin 2.2: use compilerOptions.
kotlin {
    compilerOptions { jvmTarget.set(JvmTarget.JVM_17) }
}

val repoRoot = rootDir.parentFile

val cargoNdk by tasks.registering(Exec::class) {
    description = "Build libhandoff_ffi.so for the device ABIs into src/main/jniLibs."
    workingDir = repoRoot
    commandLine(
        "cargo", "ndk",
        "-t", "arm64-v8a", "-t", "armeabi-v7a", "-t", "x86_64",
        "-o", "android/app/src/main/jniLibs",
        "build", "--release", "--locked", "-p", "handoff-ffi",
    )
}
tasks.named("preBuild") { dependsOn(cargoNdk) }

// The AAR that goes with the rustls-platform-verifier the core is built
// with: its version is that of the `rustls-platform-verifier-android` crate
// in Cargo.lock, so the Kotlin and Rust halves never drift apart.
val rustlsVerifierAndroid: String =
    Regex("""name = "rustls-platform-verifier-android"\s+version = "([^"]+)"""")
        .find(File(repoRoot, "Cargo.lock").readText())
        ?.groupValues?.get(1)
        ?: error("Cargo.lock names no rustls-platform-verifier-android: is the core still built with reqwest's rustls?")

dependencies {
    implementation(project(":sdk")) {
        exclude(group = "net.java.dev.jna")
    }
    implementation("net.java.dev.jna:jna:5.14.0@aar")
    implementation("rustls:rustls-platform-verifier:$rustlsVerifierAndroid")

    val composeBom = platform("androidx.compose:compose-bom:2025.01.00")
    implementation(composeBom)
    implementation("androidx.compose.material3:material3")
    implementation("androidx.compose.ui:ui")
    implementation("androidx.activity:activity-compose:1.10.0")
    implementation("androidx.lifecycle:lifecycle-viewmodel-compose:2.8.7")
    implementation("androidx.lifecycle:lifecycle-runtime-compose:2.8.7")
    implementation("androidx.navigation:navigation-compose:2.8.5")
    implementation("androidx.work:work-runtime-ktx:2.10.0")
}
