// Mirrors android/sdk/src/test/.../HandoffTest.kt (which runs in CI on the
// JVM). NOT compiled or run on the project's machines: there is no Swift
// toolchain there. Run with `swift test` on a Mac after build-xcframework.sh,
// with HANDOFF_RELAY pointing at a built handoff-server binary.
import Foundation
import XCTest
@testable import Handoff

final class HandoffTests: XCTestCase {
    private func newKey() -> Data {
        var bytes = [UInt8](repeating: 0, count: 32)
        _ = SecRandomCopyBytes(kSecRandomDefault, bytes.count, &bytes)
        return Data(bytes)
    }

    private func tempPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory
            .appendingPathComponent("handoff-\(UUID().uuidString)-\(name).db").path
    }

    func testAWrongKeyIsTypedAndTouchesNothing() async throws {
        let path = tempPath("keyed")
        let key = newKey()
        _ = try await Handoff.open(path: path, key: key)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        do {
            _ = try await Handoff.open(path: path, key: newKey())
            XCTFail("a wrong key opened the store")
        } catch HandoffError.WrongKey {
            // expected
        }
        XCTAssertEqual(before, try Data(contentsOf: URL(fileURLWithPath: path)))
        let again = try await Handoff.open(path: path, key: key)
        let enrolment = try await again.enrolment()
        XCTAssertNil(enrolment)
    }

    func testBadInputIsTyped() async throws {
        let phone = try await Handoff.open(path: tempPath("p"), key: newKey())
        do {
            _ = try await phone.enrol(relayUrl: "http://example.com:1", invite: "x")
            XCTFail("plain http to another host was accepted")
        } catch HandoffError.InvalidInput(let reason) {
            XCTAssertFalse(reason.isEmpty)
        }
        do {
            try await phone.claim("no-such-task")
            XCTFail("claimed a task that does not exist")
        } catch let e as HandoffError {
            XCTAssertFalse(e.userMessage().isEmpty)
        }
    }
}
