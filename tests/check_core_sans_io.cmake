# Fails if any source of the core or any header of include/wsgate includes
# something that does I/O or reads a clock: the core is sans-IO (DESIGN.md).
file(GLOB_RECURSE files ${SOURCE_DIR}/core/* ${SOURCE_DIR}/include/wsgate/*)
set(forbidden "liburing|wslay|sys/socket|netinet|arpa/inet|<chrono>|<thread>|<ctime>|<time\\.h>|<fstream>|<iostream>|unistd\\.h|sys/uio|<cstdio>|<stdio\\.h>")
list(FILTER files EXCLUDE REGEX "/core/assert_fail\\.cpp$")
foreach(f IN LISTS files)
  file(STRINGS ${f} lines REGEX "^[ \t]*#[ \t]*include")
  foreach(line IN LISTS lines)
    if(line MATCHES "${forbidden}")
      message(FATAL_ERROR "${f}: '${line}': the core must do no I/O and read no clock")
    endif()
  endforeach()
endforeach()
message(STATUS "core is sans-IO: ${SOURCE_DIR}/core and include/wsgate include no I/O")
