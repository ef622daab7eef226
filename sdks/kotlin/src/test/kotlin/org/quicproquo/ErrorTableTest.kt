package org.quicproquo

import java.io.File
import kotlin.test.assertEquals
import kotlin.test.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.quicproquo.ffi.ErrorCode
import org.quicproquo.ffi.QpqException
import org.quicproquo.ffi.errorForCode

/** Every row of the pinned table `core/client/errors.toml` arrives as its own typed exception. */
class ErrorTableTest {
    private data class Row(val number: Int, val name: String)

    private fun table(): List<Row> {
        val path = System.getProperty("qpq.errors.toml") ?: error("qpq.errors.toml is not set")
        val rows = mutableListOf<Row>()
        var number: Int? = null
        for (line in File(path).readLines().map { it.trim() }) {
            val (key, value) = line.split(" = ", limit = 2).takeIf { it.size == 2 } ?: continue
            when (key) {
                "number" -> number = value.toInt()
                "name" -> rows += Row(number ?: error("name before number"), value.trim('"'))
            }
        }
        return rows
    }

    @Test
    fun everyPinnedCodeMapsToItsOwnExceptionSubclass() {
        val rows = table()
        assertTrue(rows.size >= 15, "the table has ${rows.size} rows")
        val seen = mutableSetOf<Class<*>>()
        for (row in rows) {
            val e = assertThrows<QpqException> { errorForCode(row.number.toUInt()) }
            assertEquals(row.name, e::class.simpleName, "code ${row.number}")
            assertEquals(row.number.toUInt(), e.code.value, "code ${row.number}")
            assertTrue(seen.add(e::class.java), "one subclass per code")
        }
        // Every subclass of the sealed class is a row of the table, and the code enum matches it.
        assertEquals(rows.map { it.name }.toSet(), QpqException::class.sealedSubclasses.map { it.simpleName }.toSet())
        assertEquals(rows.map { it.number.toUInt() }, ErrorCode.entries.map { it.value })
        assertThrows<QpqException.InvalidInput> { errorForCode(0u) }
    }
}
