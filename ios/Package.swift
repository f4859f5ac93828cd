// swift-tools-version:5.9
// Handoff's Swift package: the Rust core as an xcframework (built by
// build-xcframework.sh), the uniffi-generated bindings (HandoffFFI, generated
// into Sources/HandoffFFI by the same script, never committed), and a thin
// async/await layer (Handoff). The SwiftUI app in App/ depends on `Handoff`.
import PackageDescription

let package = Package(
    name: "Handoff",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [
        .library(name: "Handoff", targets: ["Handoff"]),
    ],
    targets: [
        .binaryTarget(name: "HandoffFFIC", path: "build/HandoffFFIC.xcframework"),
        // The Rust static library calls Security.framework (TLS certificate
        // checks); a static library brings no link commands of its own.
        .target(name: "HandoffFFI", dependencies: ["HandoffFFIC"], path: "Sources/HandoffFFI",
                linkerSettings: [.linkedFramework("Security"), .linkedFramework("CoreFoundation")]),
        .target(name: "Handoff", dependencies: ["HandoffFFI"], path: "Sources/Handoff"),
        .testTarget(name: "HandoffTests", dependencies: ["Handoff"], path: "Tests/HandoffTests"),
    ]
)
