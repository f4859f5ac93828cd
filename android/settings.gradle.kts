// Handoff for Android: `sdk` is a plain Kotlin/JVM library (generated
// bindings + the small coroutine layer, tested on the host JVM), `app` is the
// Compose UI. See README.md for the build (cargo-ndk, then Gradle).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "handoff"
include(":sdk", ":app")
