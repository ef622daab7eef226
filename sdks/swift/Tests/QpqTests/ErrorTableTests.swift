import Foundation
import XCTest
@testable import Qpq

/// Every row of core/client/errors.toml arrives as its own `QpqError` case with that code:
/// Network, Unauthorized, NotFound, Conflict, InvalidInput, Crypto, Storage, RateLimited,
/// Timeout, Closed, Internal, Cancelled, Busy, Forbidden, AlreadyMember.
final class ErrorTableTests: XCTestCase {
    func testEveryPinnedCodeMapsToItsOwnCase() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../..").standardized
        let table = try String(contentsOf: root.appendingPathComponent("core/client/errors.toml"), encoding: .utf8)
        var rows: [(UInt32, String)] = []
        var number: UInt32?
        for line in table.split(separator: "\n") {
            let parts = line.components(separatedBy: " = ")
            guard parts.count == 2 else { continue }
            if parts[0] == "number" { number = UInt32(parts[1]) }
            if parts[0] == "name", let n = number { rows.append((n, parts[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")))) }
        }
        XCTAssertEqual(rows.count, 15)
        var seen = Set<String>()
        for (number, name) in rows {
            do {
                try errorForCode(number: number)
                XCTFail("errorForCode(\(number)) did not throw")
            } catch let e as QpqError {
                let caseName = String(String(describing: e).prefix { $0 != "(" })
                XCTAssertEqual(caseName, name)
                XCTAssertEqual(e.code.rawValue, number)
                XCTAssertTrue(seen.insert(caseName).inserted)
            }
        }
        XCTAssertThrowsError(try errorForCode(number: 0)) { error in
            guard case QpqError.InvalidInput = error else { return XCTFail("got \(error)") }
        }
    }
}
