# Fails if any source of the core, any header of include/wsgate, or any file
# of the session layer includes something that does I/O or reads a clock:
# they are sans-IO (DESIGN.md). The session layer may use wslay, a codec.
set(forbidden "liburing|wslay|sys/socket|netinet|arpa/inet|<chrono>|<thread>|<ctime>|<time\\.h>|<fstream>|<iostream>|unistd\\.h|sys/uio|<cstdio>|<stdio\\.h>")

function(check_includes files pattern what)
  foreach(f IN LISTS files)
    file(STRINGS ${f} lines REGEX "^[ \t]*#[ \t]*include")
    foreach(line IN LISTS lines)
      if(line MATCHES "${pattern}")
        message(FATAL_ERROR "${f}: '${line}': ${what} must do no I/O and read no clock")
      endif()
    endforeach()
  endforeach()
endfunction()

file(GLOB_RECURSE core_files ${SOURCE_DIR}/core/* ${SOURCE_DIR}/include/wsgate/*)
list(FILTER core_files EXCLUDE REGEX "/core/assert_fail\\.cpp$")
check_includes("${core_files}" "${forbidden}" "the core")

file(GLOB_RECURSE session_files ${SOURCE_DIR}/session/*)
string(REPLACE "liburing|wslay|" "liburing|" session_forbidden "${forbidden}")
check_includes("${session_files}" "${session_forbidden}" "the session layer")

message(STATUS "sans-IO: core/, include/wsgate/ and session/ include no I/O")
