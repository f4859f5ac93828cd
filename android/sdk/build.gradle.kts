// Plain Kotlin/JVM: the same sources compile for Android (through :app) and
// for the host JVM tests. The Kotlin bindings are generated from the built
// Rust library into ../../target/bindings/kotlin, never committed.
plugins {
    kotlin("jvm")
}

val repoRoot = rootDir.parentFile
val generatedBindings = File(repoRoot, "target/bindings/kotlin")

kotlin {
    jvmToolchain(17)
    // KotlinSourceSet.kotlin (the Java SourceSet has no typed `kotlin` accessor).
    sourceSets["main"].kotlin.srcDir(generatedBindings)
}

val generateBindings by tasks.registering(Exec::class) {
    description = "Build handoff-ffi for the host and generate its Kotlin bindings."
    workingDir = repoRoot
    commandLine(
        "bash", "-c",
        "cargo build --locked -p handoff-ffi -p handoff-server && " +
            "cargo uniffi-bindgen generate --no-format --library target/debug/libhandoff_ffi.so " +
            "--language kotlin --out-dir target/bindings/kotlin",
    )
}

tasks.named("compileKotlin") { dependsOn(generateBindings) }

dependencies {
    // On Android the app brings JNA as an AAR (with its native parts).
    compileOnly("net.java.dev.jna:jna:5.14.0")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-core:1.10.2")
    testImplementation("net.java.dev.jna:jna:5.14.0")
    testImplementation(kotlin("test-junit"))
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // The host-built library and the relay binary the tests start.
    dependsOn(generateBindings)
    systemProperty("jna.library.path", File(repoRoot, "target/debug").path)
    systemProperty("handoff.relay", File(repoRoot, "target/debug/handoff-server").path)
}
